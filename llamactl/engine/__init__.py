"""The generation engine: the one place that constructs `llama_cpp.Llama` and decodes.

- `core`: `Engine` (loading through the memory plan, prompt building with KV cache reuse,
  the one decode path `stream_tokens` used by chat, one-shot mode and bench);
- `template`: chat templates (the GGUF's, built-in formats, .jinja files) and their errors;
- `bindings`: the one adapter for llama-cpp-python internals, with its version check;
- `images`: a Llama 4 vision projector in llama.cpp's mtmd, images in prompts as
  placeholder ids, their embeddings decoded in the same context (imported on demand);
- `types`: EngineOptions, Sampling, Piece, Stats.

Importing this package does not import llama_cpp; loading a model does."""

from llamactl.engine.bindings import BindingsError, set_llama_log
from llamactl.engine.core import Engine
from llamactl.engine.template import CHAT_FORMATS, ChatTemplate, ChatTemplateError
from llamactl.engine.types import EngineOptions, Piece, Sampling, Stats

__all__ = ["BindingsError", "CHAT_FORMATS", "ChatTemplate", "ChatTemplateError", "Engine",
           "EngineOptions", "Piece", "Sampling", "Stats", "set_llama_log"]
