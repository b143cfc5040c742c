"""Llama tool calls: what a model's output means as calls, and the grammar that forces one.

Forms understood (from Meta's documented prompt formats):
- Llama 3.1/3.2/3.3: `{"name": ..., "parameters": {...}}` JSON (one, several separated by
  `;` or new lines, or a JSON list), optionally after `<|python_tag|>`; and the built-in
  form `<|python_tag|>brave_search.call(query="...")`.
- Llama 4: the same JSON, optionally inside `<|python_start|>...<|python_end|>`, and its
  pythonic list `[get_weather(city="Paris"), ...]`.
Only calls to functions the request declared count; anything else stays content.
"""

from __future__ import annotations

import ast
import json
import secrets
from dataclasses import dataclass
from typing import Any

TAGS = ("<|python_tag|>", "<|python_start|>", "<|python_end|>", "<|eom_id|>", "<|eom|>")


@dataclass
class Call:
    name: str
    arguments: dict[str, Any]
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = "call_" + secrets.token_hex(12)


def looks_like_call(text: str) -> bool:
    """Whether the start of an answer may be a tool call (so a stream holds it back)."""
    head = text.lstrip()
    if not head:
        return True
    return head[0] in "{[" or any(tag.startswith(head[: len(tag)]) or head.startswith(tag) for tag in TAGS)


def strip_tags(text: str) -> str:
    """`text` without the tool-call tags around it (tags inside it are left alone: in a
    JSON string they are text)."""
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for tag in TAGS:
            if text.startswith(tag):
                text, changed = text[len(tag):].lstrip(), True
            if text.endswith(tag):
                text, changed = text[: -len(tag)].rstrip(), True
    return text


def _from_json_obj(obj: Any, names: set[str]) -> Call | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return Call(name, args)


def _json_calls(text: str, names: set[str]) -> list[Call] | None:
    decoder = json.JSONDecoder()
    calls: list[Call] = []
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n;,":
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            call = _from_json_obj(item, names)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _python_calls(text: str, names: set[str]) -> list[Call] | None:
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls: list[Call] = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "call" and isinstance(func.value, ast.Name):
            name = func.value.id          # brave_search.call(query=...)
        elif isinstance(func, ast.Name):
            name = func.id
        else:
            return None
        if name not in names:
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            return None
        calls.append(Call(name, args))
    return calls or None


def parse_calls(text: str, names: set[str]) -> list[Call] | None:
    """The tool calls `text` (a whole answer, special tokens as text) makes, or None."""
    body = strip_tags(text)
    if not body or not names:
        return None
    calls = _json_calls(body, names)
    if calls is None and "<|python_end|>" in body:
        # Llama 4: <|python_start|>...<|python_end|> then the JSON calls
        calls = _json_calls(strip_tags(body.split("<|python_end|>", 1)[1]), names)
    return calls or _python_calls(body, names)


def forced_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The JSON schema of one call in Llama's JSON form, {"name": ..., "parameters": ...}:
    to the function `name`, or (None: tool_choice "required") to any of `tools`."""
    options = []
    for tool in tools:
        fn = tool["function"]
        if name is not None and fn["name"] != name:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        options.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "parameters": params},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        })
    if len(options) == 1:
        return options[0]
    return {"anyOf": options}


def grammar_for_schema(schema: dict[str, Any]) -> str:
    """GBNF for `schema`, by llama-cpp-python's own JSON-schema converter."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # what LlamaGrammar.from_json_schema uses

    grammar = json_schema_to_gbnf(json.dumps(schema))
    # llama-cpp-python 0.3.36's converter lets a string hold raw control characters (its
    # `char` rule is [^"\\]), which strict JSON parsers refuse; llama.cpp's own converter
    # excludes them. Narrow that one rule the same way.
    return grammar.replace(r'char ::= [^"\\] |', r'char ::= [^"\\\x7F\x00-\x1F] |')
