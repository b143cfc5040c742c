"""Chat templates that take tools, for the server's tests.

- `LLAMA31_TOOLS_TEMPLATE`: written for this kit in the shape of Llama 3.1 Instruct's
  documented tool format (llama-models' llama3_1/prompt_format.md): with tools, the system
  turn says `Environment: ipython`, the first user turn lists the functions as JSON and asks
  for `{"name": ..., "parameters": ...}`; an assistant's tool calls are rendered in that JSON
  form; a tool result is an `ipython` turn.
- `llama4_template()`: Llama 4 Instruct's own template, as transformers ships it.
- `with_template(ckpt, template, out)`: a copy of a checkpoint folder with that template
  (chat_template.jinja, which converters prefer).
"""

from __future__ import annotations

import shutil
from pathlib import Path

LLAMA31_TOOLS_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- if tools is not none or system_message %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools is not none %}{{- 'Environment: ipython\\n\\n' }}{%- endif %}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' or message['role'] == 'ipython' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- elif message.tool_calls is defined and message.tool_calls %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- for call in message.tool_calls %}"
    "{{- '{\"name\": \"' + call.function.name + '\", \"parameters\": ' + (call.function.arguments | tojson) + '}' }}"
    "{%- endfor %}"
    "{{- '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if loop.first and tools is not none %}"
    "{{- 'Given the following functions, please respond with a JSON for a function call with its proper '"
    "   'arguments that best answers the given prompt.\\n\\nRespond in the format {\"name\": function name, '"
    "   '\"parameters\": dictionary of argument name and its value}. Do not use variables.\\n\\n' }}"
    "{%- for t in tools %}{{- t | tojson + '\\n\\n' }}{%- endfor %}"
    "{%- endif %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def llama4_template() -> str:
    from transformers.models.llama4 import processing_llama4

    return processing_llama4.chat_template


def with_template(ckpt: Path, template: str, out: Path) -> Path:
    """A copy of the checkpoint folder `ckpt` at `out` whose chat template is `template`."""
    if not out.exists():
        shutil.copytree(ckpt, out)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return out
