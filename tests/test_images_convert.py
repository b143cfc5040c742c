"""`llamactl convert` on a Llama 4 multimodal checkpoint: the text GGUF and the vision
projector GGUF that llama.cpp's mtmd loads (tests/test_images_parity.py checks what it
computes against transformers)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.kit.llama_helpers import read_meta


@pytest.fixture(scope="module")
def vision_ckpt(llama4_checkpoint_factory):
    return llama4_checkpoint_factory("scout", vision_kit=True)


def _copy_with_vision_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vision_config"].update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.slow
def test_cli_writes_the_projector_beside_the_model(vision_ckpt, cli, tmp_path):
    out = tmp_path / "scout.gguf"
    proc = cli("convert", str(vision_ckpt), "-o", str(out), "--outtype", "f16", "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    mmproj = tmp_path / "mmproj-scout.gguf"
    assert doc["details"]["mmproj"]["path"] == str(mmproj) and mmproj.is_file()
    assert doc["details"]["mmproj"]["tokens_per_tile"] == 4
    assert "wrote the vision projector" in proc.err
    meta, tensors = read_meta(mmproj)
    assert meta["general.architecture"] == "clip" and meta["general.type"] == "mmproj"
    assert meta["clip.projector_type"] == "llama4" and meta["clip.has_vision_encoder"] is True
    assert meta["clip.vision.image_size"] == 56 and meta["clip.vision.patch_size"] == 14
    assert meta["clip.vision.projection_dim"] == 256 and meta["clip.vision.projector.scale_factor"] == 2
    assert meta["clip.vision.preproc_max_tiles"] == 16 and meta["clip.use_gelu"] is True
    assert meta["clip.vision.block_count"] == 2 and meta["clip.vision.embedding_length"] == 32
    types = {name: t.tensor_type.name for name, t in tensors.items()}
    assert types["v.patch_embd.weight"] == "F16" and types["v.blk.0.attn_q.weight"] == "F16"
    assert types["v.position_embd.weight"] == "F32" and types["v.class_embd"] == "F32"
    assert types["v.blk.1.ln2.bias"] == "F32" and types["mm.model.fc.weight"] == "F16"
    assert len(tensors) == 42
    text_meta, text_tensors = read_meta(out)
    assert text_meta["general.architecture"] == "llama4"
    assert not any(n.startswith(("v.", "mm.")) for n in text_tensors)


@pytest.mark.slow
def test_cli_mmproj_options(vision_ckpt, cli, tmp_path):
    # --no-mmproj: the text model only, as before
    out = tmp_path / "a" / "m.gguf"
    out.parent.mkdir()
    proc = cli("convert", str(vision_ckpt), "-o", str(out), "--outtype", "f32", "--no-mmproj")
    assert proc.returncode == 0, proc.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]
    assert "left out the vision tower and projector" in proc.err
    # contradictory flags: exit 2 before any work
    proc = cli("convert", str(vision_ckpt), "-o", str(tmp_path / "x.gguf"), "--no-mmproj",
               "--mmproj", str(tmp_path / "p.gguf"))
    assert proc.returncode == 2 and "contradict" in proc.err
    assert not (tmp_path / "x.gguf").exists()
    # an existing projector is not overwritten without --force: nothing is written
    b = tmp_path / "b"
    b.mkdir()
    (b / "mmproj-m.gguf").write_bytes(b"keep")
    proc = cli("convert", str(vision_ckpt), "-o", str(b / "m.gguf"), "--outtype", "f32")
    assert proc.returncode == 1 and "mmproj-m.gguf exists" in proc.err and "Traceback" not in proc.err
    assert sorted(p.name for p in b.iterdir()) == ["mmproj-m.gguf"] and (b / "mmproj-m.gguf").read_bytes() == b"keep"
    # --mmproj elsewhere
    proj = tmp_path / "elsewhere" / "vision.gguf"
    proj.parent.mkdir()
    proc = cli("convert", str(vision_ckpt), "-o", str(b / "m.gguf"), "--outtype", "f32", "--mmproj", str(proj))
    assert proc.returncode == 0, proc.err
    assert proj.is_file() and (b / "m.gguf").is_file()


def test_a_vision_tower_mtmd_cannot_run_is_refused_or_left_out(vision_ckpt, tmp_path):
    from llamactl import errors
    from llamactl.convert import convert_checkpoint

    bad = _copy_with_vision_config(vision_ckpt, tmp_path / "bad", hidden_act="silu")
    out = tmp_path / "m.gguf"
    with pytest.raises(errors.LlamactlError) as info:
        convert_checkpoint(bad, out, outtype="f32", mmproj=tmp_path / "p.gguf")
    assert "silu" in str(info.value) and "mtmd" in str(info.value)
    assert not out.exists() and not (tmp_path / "p.gguf").exists()
    # the default projector is optional: the text model is converted, with a note
    res = convert_checkpoint(bad, out, outtype="f32", mmproj=tmp_path / "p.gguf", mmproj_optional=True)
    assert out.is_file() and not (tmp_path / "p.gguf").exists()
    assert any("no projector written" in n and "silu" in n for n in res.details["notes"])


def test_a_failing_text_conversion_leaves_no_projector_behind(vision_ckpt, tmp_path, monkeypatch):
    from llamactl.convert import common, convert_checkpoint

    real = common.write_gguf

    def fail_for_the_text_model(path, arch, *args, **kw):
        if arch == "llama4":
            raise KeyboardInterrupt
        return real(path, arch, *args, **kw)

    monkeypatch.setattr(common, "write_gguf", fail_for_the_text_model)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(vision_ckpt, tmp_path / "m.gguf", outtype="f32", mmproj=tmp_path / "mmproj-m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_text_only_checkpoint_has_no_projector(llama4_checkpoint_factory, tmp_path):
    from llamactl import errors
    from llamactl.convert import projector_output

    text_only = llama4_checkpoint_factory("scout", vision=False)
    assert projector_output(text_only, tmp_path / "m.gguf") is None
    with pytest.raises(errors.LlamactlError, match="no vision tower"):
        projector_output(text_only, tmp_path / "m.gguf", tmp_path / "p.gguf")
