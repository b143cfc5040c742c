"""Images in chat: `chat --image` one-shot, `/image` in the REPL, through the engine's one
decode path, with the KV cache reused across turns; bad input refused with one line.

The model is the tiny multimodal Llama 4 of tests/kit/llama4_vision.py converted with its
projector (tests/test_images_parity.py checks what llama.cpp computes for it against
transformers); the images are real PNG and JPEG files written with Pillow."""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib

import pytest

from tests.conftest import REPO
from tests.kit.llama4_vision import write_image


@pytest.fixture(scope="module")
def vision(llama4_vision_factory):
    return llama4_vision_factory("f32")


@pytest.fixture(scope="module")
def engine(vision):
    from llamactl.engine import Engine, EngineOptions
    from llamactl.load import load_spec

    _, gguf_path, mmproj = vision
    eng = Engine.load(gguf_path, EngineOptions(load=load_spec(ctx=1024, threads=2), seed=0, mmproj=mmproj))
    yield eng
    eng.close()


def _greedy(n: int):
    from llamactl.engine import Sampling

    return Sampling(temperature=0, max_tokens=n, seed=0)


def _answer(engine, messages, n=6):
    from llamactl.engine import Piece

    pieces, stats = [], None
    for item in engine.stream_chat(messages, _greedy(n)):
        if isinstance(item, Piece):
            pieces.append(item.text)
        else:
            stats = item
    return "".join(pieces), stats


def test_the_prompt_is_the_one_transformers_builds(engine, vision, tmp_path):
    """The engine's prompt for a chat with an image equals, token for token, what
    transformers' tokenizer + Llama 4's template + Llama4Processor's image text give, and
    the first answer token is transformers' choice."""
    import numpy as np
    from transformers import AutoTokenizer

    from llamactl import images
    from llamactl.engine.images import is_placeholder
    from tests.kit.llama4_vision import load_full_model, logits_with_images

    ckpt, _, _ = vision
    img = images.read_image(write_image(tmp_path / "a.png", 50, 100, seed=5))
    engine.reset()
    messages = [{"role": "user", "content": "Describe the picture.", "images": [img]}]
    full, n_image = engine.images.expand(engine.chat_tokens(messages))
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                    {"type": "text", "text": "Describe the picture."}]}],
                                   tokenize=False, add_generation_prompt=True)
    plan = images.plan_tiles(img.height, img.width, 56, 16)
    ref_ids = tok(text.replace("<|image|>", images.expand(images.layout(plan, 4))),
                  add_special_tokens=False)["input_ids"]
    patch = tok.convert_tokens_to_ids("<|patch|>")
    assert [patch if is_placeholder(t) else t for t in full] == ref_ids
    assert n_image == 12
    ref = logits_with_images(load_full_model(ckpt), ref_ids, _pixels(images.make_tiles(img.pixels, plan)))
    last = ref[-1]
    top2 = np.sort(last)[-2:]
    assert top2[1] - top2[0] > 0.02, "a near-tie: choose another prompt"
    _, stats = _answer(engine, messages, n=1)
    assert stats.prompt_tokens == len(ref_ids) and stats.prompt_image_tokens == 12
    assert engine._history[-1] == int(np.argmax(last))


def _pixels(tiles):
    import numpy as np

    return np.ascontiguousarray(np.stack(
        [((t.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1) for t in tiles]))


def test_an_image_is_evaluated_once_across_turns(engine, tmp_path):
    from llamactl import images

    img = images.read_image(write_image(tmp_path / "a.png", 50, 100, seed=5))
    engine.reset()
    proj = engine.images.projector
    conv = [{"role": "user", "content": "What is this?", "images": [img]}]
    answer, s1 = _answer(engine, conv)
    assert s1.prompt_tokens_evaluated == s1.prompt_tokens and s1.prompt_image_tokens == 12
    tiles_after_turn_1 = proj.encoded_tiles
    conv += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the colours?"}]
    _, s2 = _answer(engine, conv)
    # turn 2 keeps all of turn 1's prompt (the image in it) in the KV cache: what it
    # evaluates is the answer and the new message, and no tile is encoded again
    assert s2.prompt_image_tokens == 12
    assert s2.prompt_tokens - s2.prompt_tokens_evaluated >= s1.prompt_tokens
    assert s2.prompt_tokens_evaluated <= s2.prompt_tokens - s1.prompt_tokens + 1
    assert proj.encoded_tiles == tiles_after_turn_1
    # a second, different image in turn 3: only its tiles are encoded
    other = images.read_image(write_image(tmp_path / "b.jpg", 40, 40, seed=9))
    conv += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "And this one?", "images": [other]}]
    _, s3 = _answer(engine, conv)
    assert s3.prompt_image_tokens == 16 and proj.encoded_tiles == tiles_after_turn_1 + 1
    assert s3.prompt_tokens - s3.prompt_tokens_evaluated >= s2.prompt_tokens


def test_a_conversation_with_images_is_saved_and_loaded(tmp_path):
    from llamactl import images
    from llamactl.chat.conversation import Conversation

    img = images.read_image(write_image(tmp_path / "a.png", 30, 30))
    conv = Conversation()
    conv.add("user", "look", [img])
    conv.add("assistant", "seen")
    path = conv.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    assert doc["messages"][0]["images"] == [str(tmp_path / "a.png")] and "images" not in doc["messages"][1]
    back = Conversation.load(path)
    assert back.messages[0]["images"][0].digest == img.digest
    (tmp_path / "a.png").unlink()
    from llamactl.errors import UsageError

    with pytest.raises(UsageError, match="image not found"):
        Conversation.load(path)


# ------------------------------------------------------------------------------ the CLI

@pytest.mark.slow
def test_cli_one_shot_with_images_counts_image_tokens(vision, cli, tmp_path):
    _, gguf_path, _ = vision      # mmproj-model.gguf lies beside model.gguf: found there
    a = write_image(tmp_path / "a.png", 50, 100, seed=5)
    b = write_image(tmp_path / "b.jpg", 40, 40, seed=2)
    proc = cli("chat", str(gguf_path), "--image", str(a), "--image", str(b), "What is shown?",
               "--json", "--temperature", "0", "-n", "4", "--threads", "2")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["usage"]["image_tokens"] == 16        # 2x1 tiles + global (12) and one tile (4)
    assert doc["usage"]["prompt_tokens"] > 16 and doc["usage"]["completion_tokens"] == 4
    # the same answer without --json: the text only on stdout
    plain = cli("chat", str(gguf_path), "--image", str(a), "--image", str(b), "What is shown?",
                "--temperature", "0", "-n", "4", "--threads", "2")
    assert plain.returncode == 0 and plain.out.strip() == doc["content"]


def _png_claiming(path, width, height):
    """A PNG whose header claims width x height (and whose data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _bad_inputs(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("these are not pixels\n")
    good_png = write_image(bad / "whole.png", 64, 64).read_bytes()
    (bad / "cut.png").write_bytes(good_png[: len(good_png) // 2])
    good_jpg = write_image(bad / "whole.jpg", 64, 64).read_bytes()
    (bad / "cut.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    _png_claiming(bad / "huge.png", 50000, 50000)
    return bad


@pytest.mark.slow
def test_cli_bad_images_exit_2_with_one_line(vision, llama4_gguf_factory, cli, tmp_path, isolated_home):
    _, gguf_path, _ = vision
    bad = _bad_inputs(tmp_path)
    before = sorted(p.name for p in bad.iterdir())
    cases = {
        "notes.png": "not an image file",
        "cut.png": "truncated",
        "cut.jpg": "truncated",
        "huge.png": "50000x50000",
        "missing.png": "image not found",
    }
    for name, words in cases.items():
        proc = cli("chat", str(gguf_path), "--image", str(bad / name), "hi", "-n", "1")
        assert proc.returncode == 2, (name, proc.err)
        lines = [ln for ln in proc.err.splitlines() if ln.strip()]
        assert words in lines[0] and "Traceback" not in proc.err and proc.out == "", (name, proc.err)
        assert len(lines) <= 2, (name, proc.err)      # the error, and at most a hint
    # a model without a projector: exit 2 before loading anything
    text_only = llama4_gguf_factory("scout")
    assert not list(text_only.parent.glob("mmproj*.gguf"))
    proc = cli("chat", str(text_only), "--image", str(bad / "whole.png"), "hi", "-n", "1")
    assert proc.returncode == 2 and "no vision projector" in proc.err and "Traceback" not in proc.err
    # nothing left behind
    assert sorted(p.name for p in bad.iterdir()) == before
    assert not isolated_home.exists() or not any(p.suffix in (".partial", ".tmp") for p in isolated_home.rglob("*"))


def test_read_image_refuses_before_decoding(tmp_path):
    from llamactl import images
    from llamactl.errors import UsageError

    bad = _bad_inputs(tmp_path)
    for name in ("notes.png", "cut.png", "cut.jpg", "huge.png"):
        with pytest.raises(UsageError) as info:
            images.read_image(bad / name)
        assert info.value.exit_code == 2 and "\n" not in info.value.message
    ok = images.read_image(bad / "whole.jpg")
    assert (ok.width, ok.height) == (64, 64) and ok.pixels.shape == (64, 64, 3)


@pytest.mark.slow
def test_repl_image_command(vision, llama4_gguf_factory, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    _, gguf_path, _ = vision
    img = write_image(tmp_path / "a.png", 50, 100, seed=5)
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1", COLUMNS="200", LINES="40")
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "chat", str(gguf_path), "--threads", "2",
                                           "--temperature", "0", "-n", "3"],
                          env=env, cwd=str(REPO), dimensions=(40, 200), encoding="utf-8", timeout=90)
    child.expect("/help for commands")
    child.expect(">>>")
    child.send(f"/image {tmp_path / 'nothing.png'}\r")
    child.expect("image not found")
    child.expect(">>>")
    child.send(f"/image {img}\r")
    child.expect(r"attached a.png \(50x100, 2x1 tiles, 17 tokens\)")
    child.expect(">>>")
    child.send("what is it?\r")
    child.expect(r"3 tokens · ")
    child.expect(">>>")
    child.send(f"/save {tmp_path / 'c.json'}\r")
    child.expect("saved")
    child.expect(">>>")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["messages"][0]["images"] == [str(img)]
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # a model without a projector: /image says so and the session goes on
    text_only = llama4_gguf_factory("scout")
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "chat", str(text_only), "--threads", "2", "-n", "2"],
                          env=env, cwd=str(REPO), dimensions=(40, 200), encoding="utf-8", timeout=90)
    child.expect(">>>")
    child.send(f"/image {img}\r")
    child.expect("no vision projector")
    child.expect(">>>")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
