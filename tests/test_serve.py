"""`llamactl serve` as a user meets it: the real server in a subprocess on port 0, serving two
tiny models (a Llama 3.x-shaped one with a kit template in Llama 3.1's tool format, and a
Llama 4 one with Llama 4 Instruct's own template from transformers), driven by the real
`openai` client. One server for the whole module; F32 weights, so that batched and single
decoding agree to ~1e-6 and greedy output is the same alone and in a batch."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import openai
import pytest

from tests.kit.server import Server
from tests.kit.templates import LLAMA31_TOOLS_TEMPLATE, llama4_template, with_template

pytestmark = pytest.mark.slow

KEY = "sk-test-9f8e7d6c5b4a"
SLOT_CTX = 2048

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}},
                       "required": ["zone"], "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def model_files(tiny_checkpoint, llama4_checkpoint_factory, tmp_path_factory):
    from llamactl.convert import convert_checkpoint

    d = tmp_path_factory.mktemp("serve-models")
    llama3 = with_template(tiny_checkpoint, LLAMA31_TOOLS_TEMPLATE, d / "tiny-ckpt")
    convert_checkpoint(llama3, d / "tiny.gguf", outtype="f32")
    llama4 = with_template(llama4_checkpoint_factory(), llama4_template(), d / "l4-ckpt")
    convert_checkpoint(llama4, d / "l4.gguf", outtype="f32")
    return {"tiny": d / "tiny.gguf", "l4": d / "l4.gguf"}


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-home")
    srv = Server([str(model_files["tiny"]), str(model_files["l4"]), "--parallel", "4", "--ctx", str(SLOT_CTX),
                  "--threads", "1", "--api-key", KEY, "--max-body", "64KiB"],
                 log=home / "stderr.log",
                 env={"LLAMACTL_HOME": str(home / "llamactl"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"})
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def ask(client, content="Hello, who are you?", model="tiny", **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 16)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


# -- the basics --------------------------------------------------------------------------------


def test_models_lists_every_model_by_name(client):
    assert sorted(m.id for m in client.models.list()) == ["l4", "tiny"]


def test_chat_answers_and_streams_the_same_tokens(client):
    whole = ask(client, max_tokens=12)
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert whole.model == "tiny"
    assert whole.usage.prompt_tokens > 5 and 0 < whole.usage.completion_tokens <= 12
    chunks = list(ask(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_content_as_text_parts_renders_like_a_string(client):
    a = ask(client, content="Hello there")
    b = client.chat.completions.create(model="tiny", temperature=0, max_tokens=16, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}])
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completions_stream_and_not(client):
    out = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert out.usage.completion_tokens <= 6 and out.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_a_model_is_also_found_by_the_reference_it_was_started_with(client, model_files):
    out = ask(client, model=str(model_files["tiny"]), max_tokens=2)
    assert out.model == "tiny"


def test_stop_strings_end_the_answer_before_them(client):
    free = ask(client, max_tokens=24).choices[0].message.content
    if len(free) < 6:
        pytest.skip("the tiny model's greedy answer is too short to cut")
    stop = free[3:6]
    cut = ask(client, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == free[: free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_resent_conversation_evaluates_only_the_new_message(client):
    first_messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    first = client.chat.completions.create(model="tiny", messages=first_messages, temperature=0, max_tokens=20)
    answer = first.choices[0].message.content
    second = client.chat.completions.create(model="tiny", temperature=0, max_tokens=4, messages=first_messages + [
        {"role": "assistant", "content": answer}, {"role": "user", "content": "And another?"}])
    cached = second.usage.prompt_tokens_details.cached_tokens
    # everything of the first turn was in the slot: its prompt and the answer as generated
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 1
    # and what was evaluated is the new turn: about what a conversation of it alone takes
    alone = ask(client, content="And another?", max_tokens=1).usage.prompt_tokens
    assert second.usage.prompt_tokens - cached <= alone + 1


# -- structured output -------------------------------------------------------------------------

PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "llama"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"age": {"type": "integer"}, "verified": {"type": "boolean"}},
            "required": ["age", "verified"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "tags", "owner"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature,seed", [(0, None), (1.0, 7), (1.0, 8)])
def test_json_schema_output_always_validates(client, temperature, seed):
    out = ask(client, content="Describe a pet as JSON.", temperature=temperature, seed=seed, max_tokens=None,
              response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}})
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), PET)


def test_json_object_output_is_an_object(client):
    out = ask(client, content="Some JSON please.", max_tokens=None, response_format={"type": "json_object"})
    assert isinstance(json.loads(out.choices[0].message.content), dict)


# -- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "l4"])
def test_named_tool_choice_calls_it_and_a_tool_result_continues(client, model):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    out = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER, TIME], temperature=0, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])

    follow = messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    more = client.chat.completions.create(model=model, messages=follow, tools=[WEATHER, TIME],
                                          temperature=0, max_tokens=8)
    assert more.choices[0].finish_reason in ("stop", "length")
    assert more.usage.prompt_tokens > out.usage.prompt_tokens + 5   # the call and its result are in the prompt


def test_required_tool_choice_calls_one_of_the_tools(client):
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Time or weather?"}], tools=[WEATHER, TIME],
        tool_choice="required", temperature=1.0, seed=3, max_tokens=120)
    assert out.choices[0].message.tool_calls, out.choices[0].message.content
    (call,) = out.choices[0].message.tool_calls
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_a_streamed_tool_call_arrives_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=120))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


# -- errors ------------------------------------------------------------------------------------


def _raw(server, body, headers=None):
    return server.post("/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}", **(headers or {})})


def test_malformed_json_is_400_with_an_error_object(server):
    status, _, body = _raw(server, b'{"model": "tiny", "messages": [')
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error" and "JSON" in body["error"]["message"]


@pytest.mark.parametrize("fields,param", [({"temperature": "hot"}, "temperature"), ({"n": 2}, "n"),
                                          ({"messages": []}, "messages"), ({"max_tokens": 0}, "max_tokens")])
def test_bad_fields_are_400_naming_the_field(client, fields, param):
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kw)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param


def test_unknown_fields_are_ignored(server):
    status, _, body = _raw(server, json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                               "max_tokens": 2, "frobnicate": True, "logit_bias": {}}).encode())
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


def test_a_prompt_longer_than_a_slot_is_400_naming_both_sizes(client):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, content="the quick brown fox " * 1000)
    message = err.value.body["message"]
    prompt = int(re.search(r"prompt is (\d+) tokens", message).group(1))
    assert prompt > SLOT_CTX and str(SLOT_CTX) in message
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, max_tokens=SLOT_CTX)
    assert f"{SLOT_CTX} for the completion" in err.value.body["message"]


def test_wrong_or_missing_key_is_401_and_health_needs_none(server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        status, _ = server.get("/v1/models", headers=headers)
        assert status == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    status, body = server.get("/health")
    assert status == 200 and body["status"] == "ok"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, model="llama-9000")
    assert err.value.body["code"] == "model_not_found"


def test_a_body_over_the_limit_is_413(server):
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (70 << 10)}]}).encode()
    status, _, body = _raw(server, big)
    assert status == 413 and "error" in body


def test_an_unknown_route_is_a_404_error_object(server):
    status, body = server.get("/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 404 and "error" in body


def test_no_cors_headers_unless_asked(server):
    import urllib.request

    req = urllib.request.Request(server.root + "/health", headers={"Origin": "http://evil.example"})
    with urllib.request.urlopen(req) as resp:
        assert "access-control-allow-origin" not in {k.lower() for k in resp.headers}


# -- slots -------------------------------------------------------------------------------------

PROMPTS = ["Tell me about llamas.", "What is 2 + 2?", "Write a haiku about rivers.", "Bonjour, ça va ?"]


def test_four_concurrent_greedy_streams_equal_each_alone(client):
    alone = [ask(client, content=p, max_tokens=40).choices[0].message.content for p in PROMPTS]
    together: dict[int, str] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def one(i: int) -> None:
        barrier.wait()
        stream = ask(client, content=PROMPTS[i], max_tokens=40, stream=True)
        together[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [together[i] for i in range(len(PROMPTS))] == alone


def _decoded(server) -> int:
    return next(m["tokens_decoded"] for m in server.get("/health")[1]["models"] if m["id"] == "tiny")


def test_a_client_that_disconnects_frees_its_slot(server, client):
    content = "Describe the Andes."
    full = ask(client, content=content, max_tokens=1500)
    if full.usage.completion_tokens < 1000:
        pytest.skip("the tiny model ends this answer too early to interrupt it")
    server.wait_idle()
    before = _decoded(server)
    stream = ask(client, content=content, max_tokens=1500, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    server.wait_idle(timeout=10)
    # the generation stopped soon after the client left, far short of the whole answer
    assert _decoded(server) - before < full.usage.completion_tokens / 2
    line = [ln for ln in server.stderr.splitlines() if ln.endswith("disconnected")][-1]
    assert line.startswith("POST /v1/chat/completions 200")
    assert ask(client, max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_access_log_has_one_line_per_request_without_prompts_or_keys(server, client):
    ask(client, content="zanzibar-marker-words", max_tokens=3)
    log = server.stderr
    assert "zanzibar" not in log and KEY not in log
    assert re.search(r"^POST /v1/chat/completions 200 prompt=\d+ completion=\d+ \d+ms$", log, re.M)
    assert re.search(r"^GET /v1/models 401 \d+ms$", log, re.M) or "401" in log
