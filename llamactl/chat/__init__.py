"""Chat: the conversation and its context window (conversation.py), with no terminal code.
Its presentation, the interactive REPL and one-shot mode for pipes, lives in the CLI
(llamactl.cli.repl, llamactl.cli.oneshot); all of them generate through llamactl.engine."""
