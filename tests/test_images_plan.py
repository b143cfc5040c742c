"""The memory plan counts a vision projector: its weights (exact, from its header) and its
compute buffer (an estimate, checked against what mtmd itself reserves), on the GPU when
any layer is there (as the engine loads it), else in RAM; `plan` and `chat --dry-run`
show them."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture(scope="module")
def vision(llama4_vision_factory):
    return llama4_vision_factory("f32")


def test_plan_counts_the_projector_on_the_gpu_or_in_ram(vision, cli_here, tmp_path):
    from llamactl.engine.images import ProjectorInfo
    from tests.kit.llama_helpers import read_meta

    _, gguf_path, mmproj = vision
    _, tensors = read_meta(mmproj)
    weights = sum(int(t.n_bytes) for t in tensors.values())
    info = ProjectorInfo.read(mmproj)
    assert info.tensor_bytes == weights

    def plan(*args):
        proc = cli_here("plan", str(gguf_path), "--ram", "64GiB", "--json", *args)
        assert proc.returncode == 0, proc.err
        return json.loads(proc.out)

    gpu = plan("--vram", "24GiB")
    assert gpu["mmproj"] == str(mmproj) and gpu["n_gpu_layers"] > 0
    assert gpu["gpu"]["vision_weights"] == weights and gpu["gpu"]["vision_compute"] == info.compute_bytes()
    assert "vision_weights" not in gpu["cpu"]
    cpu = plan("--vram", "0")
    assert cpu["cpu"]["vision_weights"] == weights and "vision_weights" not in cpu["gpu"]
    bare = plan("--vram", "0", "--no-mmproj")
    assert bare["mmproj"] is None and "vision_weights" not in bare["cpu"]
    assert cpu["cpu"]["total"] - bare["cpu"]["total"] == weights + info.compute_bytes()
    text = cli_here("plan", str(gguf_path), "--vram", "24GiB", "--ram", "64GiB")
    assert "vision projector" in text.out and "its compute (est.)" in text.out
    # chat --dry-run with an image plans the projector the chat would load
    from tests.kit.llama4_vision import write_image

    img = write_image(tmp_path / "a.png", 20, 20)
    dry = cli_here("chat", str(gguf_path), "--dry-run", "--json", "--image", str(img), "--ctx", "512")
    assert dry.returncode == 0, dry.err
    doc = json.loads(dry.out)
    assert doc["mmproj"] == str(mmproj)
    side = doc["gpu"] if doc["n_gpu_layers"] else doc["cpu"]
    assert side["vision_weights"] == weights


@pytest.mark.slow
def test_compute_estimate_covers_what_mtmd_reserves_for_a_scout_shaped_tower(llama4_checkpoint_factory,
                                                                              tmp_path, capfd):
    """A one-layer tower of Scout's widths (336-pixel tiles, width 1408, 16 heads, FFN 5632):
    the compute buffer does not grow with the layer count. Measured: mtmd reserves 37.1 MiB
    without flash attention and 19.9 MiB with it; the estimate is 42.0 MiB."""
    import llama_cpp
    from llama_cpp import mtmd_cpp

    from llamactl.convert import convert_checkpoint
    from llamactl.engine import bindings
    from llamactl.engine.images import ProjectorInfo

    shape = dict(hidden_size=1408, num_attention_heads=16, intermediate_size=5632, image_size=336,
                 patch_size=14, num_hidden_layers=1, projector_input_dim=4096, projector_output_dim=4096,
                 vision_output_dim=4096)
    ckpt = llama4_checkpoint_factory("scout", vision_kit=True, vision_overrides=tuple(shape.items()))
    model, mmproj = tmp_path / "m.gguf", tmp_path / "mmproj-m.gguf"
    convert_checkpoint(ckpt, model, outtype="f16", mmproj=mmproj)
    estimate = ProjectorInfo.read(mmproj).compute_bytes()
    bindings.set_llama_log(True)
    bindings.route_mtmd_log()
    llm = llama_cpp.Llama(str(model), n_ctx=256, verbose=False, n_threads=2)
    reserved = {}
    try:
        for fa in (0, 1):   # llama_flash_attn_type: disabled, enabled
            params = mtmd_cpp.mtmd_context_params_default()
            params.use_gpu, params.warmup, params.n_threads, params.flash_attn_type = False, True, 2, fa
            capfd.readouterr()
            ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
            assert ctx
            mtmd_cpp.mtmd_free(ctx)
            log = capfd.readouterr().err
            sizes = re.findall(r"reserve_compute_meta:\s+CPU compute buffer size =\s+([\d.]+) MiB", log)
            reserved[fa] = float(sizes[-1]) * 2**20
    finally:
        bindings.set_llama_log(False)
        llm.close()
    print(f"\nmtmd reserves {reserved[0] / 2**20:.2f} MiB (no flash attention), {reserved[1] / 2**20:.2f} MiB "
          f"(flash attention); estimate {estimate / 2**20:.2f} MiB")
    assert max(reserved.values()) <= estimate <= 1.5 * reserved[0]
