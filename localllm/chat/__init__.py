"""Chat: messages and tools in one protocol-neutral shape, templates, output parsing per family.

Every API adapter (OpenAI chat and Responses, Anthropic Messages, Ollama) maps its wire
format onto these types; nothing here imports aiohttp, llama_cpp or the server.
"""
