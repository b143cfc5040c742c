"""`serve`: chat messages with image_url parts (data: URLs; local files only with
--allow-file-images), through the server's batched slots, with the real openai client. The
answer to a prompt with an image equals the one-shot chat's (same engine, same prompt)."""

from __future__ import annotations

import base64
import json

import openai
import pytest

from tests.kit.llama4_vision import write_image
from tests.kit.server import Server

pytestmark = pytest.mark.slow

KEY = "sk-images-test"


@pytest.fixture(scope="module")
def vision(llama4_vision_factory):
    return llama4_vision_factory("f32")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    return {"a": write_image(d / "a.png", 50, 100, seed=5), "b": write_image(d / "b.jpg", 40, 40, seed=2),
            "text": d / "notes.png"}


def _start(model, home, *extra):
    return Server([str(model), "--parallel", "2", "--ctx", "512", "--threads", "2", "--api-key", KEY, *extra],
                  log=home / "stderr.log",
                  env={"LLAMACTL_HOME": str(home / "llamactl"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def server(vision, tmp_path_factory):
    _, gguf_path, _ = vision       # the projector lies beside the model: found there
    srv = _start(gguf_path, tmp_path_factory.mktemp("serve-images"))
    yield srv
    assert srv.stop() == 0


def data_url(path) -> str:
    kind = "jpeg" if str(path).endswith(".jpg") else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _ask(client, parts, model="model", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}],
                                          temperature=0, max_tokens=4, seed=0, **kw)


def test_image_url_parts_give_the_one_shot_answer(server, vision, pictures, cli):
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
    parts = [{"type": "image_url", "image_url": {"url": data_url(pictures["a"])}},
             {"type": "image_url", "image_url": {"url": data_url(pictures["b"])}},
             {"type": "text", "text": "What is shown?"}]
    r = _ask(client, parts)
    _, gguf_path, _ = vision
    one = cli("chat", str(gguf_path), "--image", str(pictures["a"]), "--image", str(pictures["b"]),
              "What is shown?", "--json", "--temperature", "0", "-n", "4", "--seed", "0", "--threads", "2")
    assert one.returncode == 0, one.err
    doc = json.loads(one.out)
    assert r.usage.prompt_tokens == doc["usage"]["prompt_tokens"]      # 16 image positions included
    assert r.choices[0].message.content.strip() == doc["content"]
    # the same request again reuses the slot's cache (the images are not evaluated again)
    again = _ask(client, parts)
    assert again.choices[0].message.content == r.choices[0].message.content
    # streaming
    stream = _ask(client, parts, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip() == doc["content"]
    # two requests with different images at once, decoded together in the two slots
    from concurrent.futures import ThreadPoolExecutor

    only_b = [{"type": "image_url", "image_url": {"url": data_url(pictures["b"])}},
              {"type": "text", "text": "And this?"}]
    alone = _ask(client, only_b).choices[0].message.content
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda p: _ask(client, p).choices[0].message.content, [parts, only_b]))
    assert both == [r.choices[0].message.content, alone]


def test_bad_image_parts_are_400(server, pictures, tmp_path):
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)
    pictures["text"].write_text("not pixels")
    cases = [
        ({"url": str(pictures["a"])}, "--allow-file-images"),
        ({"url": "https://example.com/cat.png"}, "remote"),
        ({"url": "data:image/png;base64,@@@"}, "not valid base64"),
        ({"url": "data:image/png;base64," + base64.b64encode(b"no image here").decode()}, "not an image"),
        ({"url": data_url(pictures["a"])[: 200]}, "messages.0"),
    ]
    for image_url, words in cases:
        with pytest.raises(openai.BadRequestError) as info:
            _ask(client, [{"type": "image_url", "image_url": image_url}, {"type": "text", "text": "hi"}])
        assert words in str(info.value), (words, str(info.value))
    # the server is still serving
    assert _ask(client, "plain text").choices[0].message.content is not None


def test_file_images_with_the_flag_and_a_model_without_projector(vision, llama4_gguf_factory, pictures,
                                                                 tmp_path_factory):
    _, gguf_path, _ = vision
    srv = _start(gguf_path, tmp_path_factory.mktemp("serve-files"), "--allow-file-images")
    try:
        client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0, timeout=120)
        by_path = _ask(client, [{"type": "image_url", "image_url": {"url": str(pictures["a"])}},
                                {"type": "text", "text": "What is shown?"}])
        by_data = _ask(client, [{"type": "image_url", "image_url": {"url": data_url(pictures["a"])}},
                                {"type": "text", "text": "What is shown?"}])
        assert by_path.choices[0].message.content == by_data.choices[0].message.content
    finally:
        assert srv.stop() == 0
    text_only = llama4_gguf_factory("scout")
    srv = _start(text_only, tmp_path_factory.mktemp("serve-text"))
    try:
        client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError, match="no vision projector"):
            _ask(client, [{"type": "image_url", "image_url": {"url": data_url(pictures["a"])}},
                          {"type": "text", "text": "hi"}], model=text_only.stem)
    finally:
        assert srv.stop() == 0
