"""Chat: the conversation and its context window (conversation.py), one-shot mode for
shell pipes (oneshot.py) and the interactive REPL (repl.py). All of them generate through
llamactl.engine."""
