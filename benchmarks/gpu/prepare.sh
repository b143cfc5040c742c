#!/usr/bin/env bash
# Gather the GPU check's kit on an ordinary machine (network needed for pip, no GPU):
#
#   benchmarks/gpu/prepare.sh KIT_DIR [--sdist FILE] [--max-mib 48]
#
# KIT_DIR (git-ignored when it is benchmarks/gpu/kit, the suggested place) receives the
# trimmed source of the pinned llama-cpp-python, a wheel of this checkout's llamactl and
# wheels (CPython 3.12, manylinux x86-64) of the pure-Python packages the GPU machine
# lacks. Prints the kit's size; fails (exit 1) above 48 MiB. Details: benchmarks/gpu/kit.py.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    [ $# -ge 1 ] && exit 0 || exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$HERE/kit.py" prepare "$@"
