"""Textual TUI for localllm (see the TUI issue). Speaks to the server over HTTP only."""
