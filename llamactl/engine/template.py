"""Chat templates: the model's own (`tokenizer.chat_template` in the GGUF), a built-in
format (`--chat-format llama3`) or a .jinja file, rendered in Jinja2's immutable sandbox as
transformers does.

A template that is broken (a Jinja syntax error, a runtime error, a range or attribute the
sandbox refuses) raises `ChatTemplateError`, which names the template's origin (the model
file, the .jinja file or the built-in format) and the line: the template is at fault, not
llamactl, and `--chat-format` is the way around it."""

from __future__ import annotations

import datetime as _dt
import json

from llamactl.errors import LlamactlError


LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA4_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}"
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' + message['content'] | trim + '<|eot|>' }}"
    "{% else %}"   # image and text parts, as Llama 4 Instruct's own template writes them
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|image|>' }}{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{{ '<|eot|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set system.text = message['content'] %}"
    "{% elif message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' }}"
    "{% if system.text %}{{ '<<SYS>>\n' + system.text + '\n<</SYS>>\n\n' }}{% set system.text = '' %}{% endif %}"
    "{{ message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CHAT_FORMATS = {
    "llama3": LLAMA3_TEMPLATE,
    "llama-3": LLAMA3_TEMPLATE,
    "llama4": LLAMA4_TEMPLATE,
    "llama-4": LLAMA4_TEMPLATE,
    "llama2": LLAMA2_TEMPLATE,
    "llama-2": LLAMA2_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "plain": PLAIN_TEMPLATE,
}



class ChatTemplateError(LlamactlError):
    """A chat template that cannot be compiled or rendered (exit 1): the template's fault."""


_HINT = "use another template: --chat-format llama3 (llama4, llama2, chatml, plain) or a .jinja file"


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised on (Jinja compiles templates to code whose
    frames have the file name `<template>` and the template's line numbers)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class ChatTemplate:
    """A chat template rendered in Jinja2's immutable sandbox, as transformers does.

    `origin` says where the template comes from, for error messages ("the chat template in
    /models/x.gguf", "/home/me/t.jinja", "the built-in llama3 format").

    The date a template may stamp into the system prompt (`strftime_now`) is frozen when the
    template is made, so that the same conversation renders to the same bytes on every turn
    (a changed prefix would defeat KV cache reuse)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", name: str = "custom",
                 origin: str | None = None, now: _dt.datetime | None = None):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.name = name
        self.origin = origin or f"the chat template {name}"
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._now = now or _dt.datetime.now()
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise self._fault("is not valid Jinja", exc) from exc
        except jinja2.TemplateError as exc:
            raise self._fault("cannot be compiled", exc) from exc

    def _fault(self, what: str, exc: BaseException) -> ChatTemplateError:
        line = _template_line(exc)
        where = f" (line {line})" if line else ""
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return ChatTemplateError(f"{self.origin} {what}{where}: {detail}", hint=_HINT)

    @property
    def takes_tools(self) -> bool:
        """Whether the template renders a `tools` list (Llama 3.1+ and Llama 4 Instruct do)."""
        return "tools" in self.source

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        import jinja2
        from jinja2.sandbox import SecurityError

        def raise_exception(message: str) -> None:
            raise ChatTemplateError(f"{self.origin} refused the conversation: {message}")

        try:
            return self._template.render(
                # every field a message has (tool_calls, tool_call_id, name ...), content
                # "" rather than None (an assistant message that only calls tools)
                messages=[{k: v for k, v in m.items() if v is not None} | {"content": m.get("content") or ""}
                          for m in messages],
                bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=raise_exception,
                strftime_now=lambda fmt: self._now.strftime(fmt),
                date_string=self._now.strftime("%d %b %Y"),
                tools=tools or None, functions=None, tool_choice=None, function_call=None,
            )
        except LlamactlError:
            raise
        except SecurityError as exc:
            raise self._fault("does something the template sandbox refuses", exc) from exc
        except OverflowError as exc:  # the sandbox's "Range too big" is an OverflowError
            raise self._fault("does something the template sandbox refuses", exc) from exc
        except jinja2.TemplateError as exc:
            raise self._fault("failed", exc) from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                RecursionError) as exc:
            raise self._fault("failed", exc) from exc


def builtin(name: str, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    """A built-in format by name (see CHAT_FORMATS)."""
    return ChatTemplate(CHAT_FORMATS[name], bos_token=bos_token, eos_token=eos_token, name=name,
                        origin=f"the built-in {name} chat format")
