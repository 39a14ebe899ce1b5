"""The real aiohttp app over a scripted backend, assembled by the composition root
(compose.start_served) instead of llama.cpp: the HTTP surface tested in seconds."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer

from localllm.compose import start_served
from localllm.config import Config
from localllm.engine.scheduler import BatchChunk
from localllm.models.manager import LoadedModel, ModelLoadFailed
from localllm.server.app import create_app
from tests.serving import as_run_app_serves
from tests.unit.fakes import BOS, EOS, FakeBackend

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
REPLY = "Hello!"
"""What every request gets: these characters, one token each, then end of generation."""
NUM_VOCAB = 2000
CHAR_BASE = 1000
"""Token CHAR_BASE + ord(c) is the character c (ASCII); the tokenizer and detokenizer agree."""


class ScriptedBackend(FakeBackend):
    """FakeBackend with a reversible tokenizer, a chat template and numpy embeddings on top.
    Every request is answered with REPLY, then EOS."""

    num_vocab = NUM_VOCAB

    def __init__(self, num_ctx: int, reply: str = REPLY, template: str = CHAT_TEMPLATE) -> None:
        super().__init__(num_kv_cells=num_ctx)
        self.reply = [CHAR_BASE + ord(c) for c in reply] + [EOS]
        self.template = template
        self.num_generated: dict[str, int] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return ([BOS] if add_special else []) + [CHAR_BASE + min(ord(c), 999) for c in text]

    def token_piece(self, token_id: int) -> bytes:
        return chr(token_id - CHAR_BASE).encode() if token_id >= CHAR_BASE else super().token_piece(token_id)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return b"".join(self.token_piece(t) for t in token_ids).decode("utf-8", "replace")

    def decode(self, chunks: Sequence[BatchChunk]) -> dict[str, int]:
        for chunk in chunks:
            if chunk.wants_logits:
                done = self.num_generated.get(chunk.request.request_id, 0)
                self.script[chunk.request.request_id] = [self.reply[min(done, len(self.reply) - 1)]]
                self.num_generated[chunk.request.request_id] = done + 1
        return super().decode(chunks)

    def remove_sampler(self, request_id: str) -> None:
        super().remove_sampler(request_id)
        self.num_generated.pop(request_id, None)

    def embed(self, inputs: Sequence[Sequence[int]]) -> list:
        return [np.full(8, 1 / np.sqrt(8), dtype=np.float32) for _ in inputs]

    def metadata(self, key: str) -> str | None:
        return self.template if key == "tokenizer.chat_template" else super().metadata(key)


def scripted_loader(loads: list[str] | None = None, *, reply: str = REPLY, template: str = CHAT_TEMPLATE):
    """A model loader for create_app: every model ref loads instantly as a ScriptedBackend (answering
    `reply`, with `template` as its chat template) through the composition root's own wiring
    (engine, served-model record)."""

    async def load(config: Config, on_progress=None) -> LoadedModel:
        ref = config.engine.model
        if loads is not None:
            loads.append(ref)
        if ref.startswith("missing"):
            from localllm.models.registry import UnknownModel

            raise UnknownModel(ref)
        if ref.startswith("broken"):
            raise ModelLoadFailed(f"scripted load failure of {ref}")
        return await start_served(ScriptedBackend(config.engine.ctx, reply, template), config, name=ref,
                                  path=Path(f"/models/{ref}.gguf"), spec=None, identity=f"scripted:{ref}",
                                  started_s=time.monotonic())

    return load


def api_config(tmp_path: Path, **flat: object) -> Config:
    """A small server: 2 slots, no disk KV states (the scripted backend has no state to save)."""
    return Config.from_flat({"data_dir": str(tmp_path), "model": "scripted", "parallel": 2, "ctx": 1024,
                             "kv_cache_min_tokens": 0, "cache_enabled": False, **flat})


@asynccontextmanager
async def api_server(config: Config, loads: list[str] | None = None, loader=None) -> AsyncIterator[TestServer]:
    """The real app on loopback (models from `loader`, by default scripted_loader(loads)); the
    default model is loaded (ready) before it yields."""
    server = TestServer(create_app(config, loader=loader or scripted_loader(loads)), host="127.0.0.1")
    await server.start_server()
    as_run_app_serves(server)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                if (await http.get(server.make_url("/ready"))).status == 200:
                    break
                await asyncio.sleep(0.01)
        yield server
    finally:
        await server.close()

