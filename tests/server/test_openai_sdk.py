"""The official openai SDK, sync and async, against a real server on loopback."""
from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import openai
import pytest

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration
KEY = "sdk-key"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path):
    config = Config.from_flat({"parallel": 4, "ctx": 8192, "threads": 2, "api_key": KEY, "data_dir": str(data_dir)})
    async with served(config) as server:
        yield str(server.make_url("/v1"))


@pytest.fixture(scope="module")
def aclient(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)


async def test_sync_client_chat_and_models(base_url: str):
    def calls():
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        models = client.models.list()
        chat = client.chat.completions.create(model="gemma3-270m", messages=HELLO, max_tokens=8, temperature=0)
        return models, chat

    # The server runs on this event loop, so the blocking client goes to a thread.
    models, chat = await asyncio.to_thread(calls)
    assert [m.id for m in models.data] == ["gemma3-270m"]
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.completion_tokens >= 1


async def test_async_streaming_chat_with_usage(aclient: openai.AsyncOpenAI):
    stream = await aclient.chat.completions.create(
        model="gemma3-270m", messages=HELLO, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 0


async def test_async_completions_stream_and_plain(aclient: openai.AsyncOpenAI):
    plain = await aclient.completions.create(model="gemma3-270m", prompt="1, 2, 3,", max_tokens=6, temperature=0)
    stream = await aclient.completions.create(model="gemma3-270m", prompt="1, 2, 3,", max_tokens=6, temperature=0,
                                              stream=True)
    streamed = "".join([c.choices[0].text async for c in stream])
    assert streamed == plain.choices[0].text


async def test_json_schema_output_parses_and_validates(aclient: openai.AsyncOpenAI):
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                       "count": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["colour", "count", "ok"],
        "additionalProperties": False,
    }
    chat = await aclient.chat.completions.create(
        model="gemma3-270m", max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Pick a colour and a count. Reply in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}})
    value = json.loads(chat.choices[0].message.content)
    assert set(value) == {"colour", "count", "ok"}
    assert value["colour"] in ("red", "green", "blue")
    assert isinstance(value["count"], int) and isinstance(value["ok"], bool)
    assert chat.choices[0].finish_reason == "stop"


async def test_json_object_mode_gives_a_json_object(aclient: openai.AsyncOpenAI):
    # The bundled base model rambles in chat; a few-shot completion lets it close the object.
    completion = await aclient.completions.create(
        model="gemma3-270m", max_tokens=60, temperature=0,
        prompt='Q: colour of the sky?\nA: {"colour": "blue"}\nQ: colour of grass?\nA: ',
        extra_body={"response_format": {"type": "json_object"}})
    assert completion.choices[0].finish_reason == "stop", completion.choices[0].text
    assert isinstance(json.loads(completion.choices[0].text), dict)


async def test_logprobs_are_consistent_with_greedy_choice(aclient: openai.AsyncOpenAI):
    chat = await aclient.chat.completions.create(
        model="gemma3-270m", messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    entries = chat.choices[0].logprobs.content
    assert len(entries) == chat.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy took the best
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    completion = await aclient.completions.create(model="gemma3-270m", prompt="The sky is", max_tokens=3,
                                                  temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == completion.choices[0].text


async def test_sdk_surfaces_openai_errors(aclient: openai.AsyncOpenAI):
    with pytest.raises(openai.BadRequestError) as bad:
        await aclient.chat.completions.create(model="gemma3-270m", messages=HELLO, temperature=9)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        await aclient.chat.completions.create(model="no-such-model", messages=HELLO)
    wrong_key = openai.AsyncOpenAI(base_url=str(aclient.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong_key.models.list()


async def test_embeddings_are_normalised_deterministic_and_batched(aclient: openai.AsyncOpenAI):
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "The cat sat on the mat."]
    batch = await aclient.embeddings.create(model="gemma3-270m", input=texts)
    vectors = [np.array(d.embedding) for d in batch.data]
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert len({v.size for v in vectors}) == 1 and vectors[0].size >= 256
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors)
    # Same text, same vector up to the batch effect: llama.cpp's batched CPU kernels are not
    # batch-invariant, and on AVX-512 machines rows 0 and 2 of one batch differ by ~5e-4.
    assert float(np.dot(vectors[0], vectors[2])) > 0.9999
    assert not np.allclose(vectors[0], vectors[1], atol=1e-2)
    single = await aclient.embeddings.create(model="gemma3-270m", input=texts[1])
    # Batching does not mix inputs (batched kernels differ in the last digits, hence cosine).
    assert float(np.dot(single.data[0].embedding, vectors[1])) > 0.995
    assert batch.usage.prompt_tokens == batch.usage.total_tokens > 10
    encoded = await aclient.embeddings.create(model="gemma3-270m", input=texts[1], encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(encoded.data[0].embedding), dtype="<f4")
    assert np.allclose(decoded, single.data[0].embedding, atol=1e-6)  # one input alone: deterministic


async def test_embedding_input_errors(aclient: openai.AsyncOpenAI):
    for bad in ["", ["ok", ""], [[1, 2, 999999999]], "word " * 3000]:
        with pytest.raises(openai.BadRequestError) as error:
            await aclient.embeddings.create(model="gemma3-270m", input=bad)
        assert error.value.body["param"] == "input"
