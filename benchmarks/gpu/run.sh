#!/usr/bin/env bash
# The GPU check, for a bare, offline GPU machine (one NVIDIA H200: CUDA nvcc, CMake, ninja,
# Python 3.12 with PyTorch, no network), within nine minutes of wall time:
#
#   benchmarks/gpu/run.sh KIT_DIR OUT_DIR [--dry-run]
#
# KIT_DIR is what benchmarks/gpu/prepare.sh wrote. The check builds llama-cpp-python with
# CUDA for compute capability 9.0 only on all cores (mtmd too once llamactl uses it),
# installs it and llamactl offline (pip --no-index), runs `llamactl doctor --json`, writes
# full-shape synthetic GGUFs (Llama 3.2 1B and 3B Q4_K_M, Llama 4 Scout at the largest
# quant that fits the disk, Llama 3.3 70B Q4_K_M after Scout is deleted) and, for each,
# compares `llamactl plan` with what llama.cpp allocates and nvidia-smi reports, runs
# `llamactl bench` pp512/tg128 on the GPU (tg's weight bytes/s against 4.8 TB/s), runs
# Scout as planned for a 24 GiB card (GPU memory taken must stay under 24 GiB) and the
# engine-overhead benchmark on the GPU. Every phase prints a UTC timestamp.
#
# Results: OUT_DIR/results.json, OUT_DIR/results.md, OUT_DIR/cuda_measured.json (the
# planner's CUDA constants as measured; benchmarks/gpu/apply.py OUT_DIR applies them),
# OUT_DIR/doctor.json and OUT_DIR/logs.tar.gz (the build log, each step's stderr, llama.cpp's
# logs). results.json is rewritten after every phase; at GPUKIT_DEADLINE seconds (default
# 570) the check stops itself, skipping what is left, and still writes it all.
# Exit 0 when every phase ran and every check held, 1 otherwise, 2 on bad arguments.
#
# --dry-run: everything except the CUDA build and GPU execution, on any machine with the
# project's (CPU) llama-cpp-python installed: toy widths of the same four models, the
# trimmed source only configured by CMake, no nvidia-smi. CI runs it (tests/test_gpu_kit.py).
#
# Environment: GPUKIT_WORK (build and install folder, default $TMPDIR/llamactl-gpucheck, on
# local disk), GPUKIT_MODELS (where the GGUFs go, default GPUKIT_WORK/models),
# GPUKIT_WRITE_THREADS (default 8), GPUKIT_DIRTY_RATIO (vm.dirty_ratio during the run,
# default 40, 0 leaves it alone; restored at the end), GPUKIT_CMAKE_EXTRA (more CMake
# options for the build, e.g. -DGGML_CUDA_FA=OFF to build faster), GPUKIT_KEEP_MODELS=1
# (keep the GGUFs), GPUKIT_DEADLINE, PYTHON (default python3).
set -euo pipefail
if [ $# -lt 2 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    case "${1:-}" in -h|--help) exit 0 ;; *) exit 2 ;; esac
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$HERE/check.py" "$@"
