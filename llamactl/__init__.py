"""llamactl: a model manager and chat tool for Meta's Llama models, on llama.cpp."""

__version__ = "0.1.0"
