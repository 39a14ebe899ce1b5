"""OpenAI request bodies -> localllm types, with errors that name the parameter."""
from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from aiohttp import web

from localllm.constraints import Grammar
from localllm.server.errors import ApiError, bad_request
from localllm.types import InvalidParam, SamplingParams

MAX_CHOICES = 8
MAX_JSON_DEPTH = 64
"""Nesting of arrays and objects in a request body; deeper bodies get a 400 (no recursion limits hit)."""

JsonGrammar = Callable[[dict | None], Grammar]
"""Turns a JSON schema (or None: any object) into a bounded, compiled grammar; the engine
provides it. Blocking: requests with a response_format are validated in a worker thread."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a completion or chat request asks for, validated."""

    model: str | None
    prompts: list[str | list[int]]
    """One prompt per input; chat requests have exactly one (the rendered messages)."""
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    echo: bool = False


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body. 415 unless sent as application/json: a web page can send a
    text/plain or form body cross-site without a CORS preflight, but not application/json."""
    mime = request.content_type.lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        raise ApiError(415, f"Send the request body as JSON with 'Content-Type: application/json' (got "
                       f"{request.headers.get('Content-Type', 'none')[:100]!r}).", code="unsupported_media_type")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request body too large.", code="request_too_large") from None
    # A large body is parsed and checked in a worker: a few MB take a second of CPU.
    return await asyncio.to_thread(_parse, raw) if len(raw) > _PARSE_INLINE_BYTES else _parse(raw)


_PARSE_INLINE_BYTES = 64 * 1024
_SUSPECT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|NaN|Infinity|[eE][+-]?\d{3}|\d{300}")
"""What a lone surrogate (escaped or raw: json decodes bytes with surrogatepass) or a non-finite
number looks like in the raw body; only a body that has one is walked value by value for them."""


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)  # accepts NaN and Infinity, which _check_value refuses
    except (ValueError, UnicodeDecodeError):
        raise bad_request("The request body is not valid JSON.") from None
    except RecursionError:
        raise bad_request(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH or _SUSPECT.search(raw):
        for key, value in body.items():
            _check_value(key, value)
    return body


def _check_value(key: str, value: object) -> None:
    """Walks one top-level field without recursion: bounded depth, finite numbers, and text
    that can be encoded (a lone surrogate such as "\\ud800" decodes fine but fails later)."""
    stack = [(key, 0), (value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"{key} is nested more than {MAX_JSON_DEPTH} levels deep", key)
        if isinstance(item, str):
            if not _is_encodable(item):
                raise bad_request(f"{key} contains a lone surrogate (invalid Unicode text)", key)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise bad_request(f"{key} must hold finite numbers (not NaN, Infinity or 1e999)", key)
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sampling_params(body: dict[str, Any], *, chat: bool, json_grammar: JsonGrammar) -> SamplingParams:
    max_tokens = _opt(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _opt(body, "max_tokens", int)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise bad_request("stop must be a string or a list of strings", "stop")
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_num(body, "temperature", 1.0),
            top_p=_num(body, "top_p", 1.0),
            top_k=_opt(body, "top_k", int) or 0,
            min_p=_num(body, "min_p", 0.0),
            seed=_opt(body, "seed", int),
            repeat_penalty=_num(body, "repeat_penalty", 1.0),
            frequency_penalty=_num(body, "frequency_penalty", 0.0),
            presence_penalty=_num(body, "presence_penalty", 0.0),
            logit_bias=_logit_bias(body.get("logit_bias")),
            stop=stops,
            ignore_eos=_opt(body, "ignore_eos", bool) or False,
            grammar=_grammar(body.get("response_format"), json_grammar),
            logprobs=_chat_logprobs(body) if chat else _completion_logprobs(body),
        )
    except InvalidParam as exc:
        raise bad_request(str(exc), exc.param) from None


def generation_request(body: dict[str, Any], prompts: list[str | list[int]], *, chat: bool,
                       json_grammar: JsonGrammar) -> GenerationRequest:
    n = _opt(body, "n", int)
    n = 1 if n is None else n  # n: 0 is an error, as at OpenAI, not the default
    if not 1 <= n <= MAX_CHOICES:
        raise bad_request(f"n must be between 1 and {MAX_CHOICES}", "n")
    if len(prompts) * n > MAX_CHOICES:
        raise bad_request(f"at most {MAX_CHOICES} choices (prompts x n) per request", "n")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = (stream_options or {}).get("include_usage")
    include_usage = False if include_usage is None else include_usage  # null: absent, like other options
    if not isinstance(include_usage, bool):  # "false" or 0 must not mean anything
        raise bad_request("stream_options.include_usage must be a boolean", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    return GenerationRequest(
        model=model,
        prompts=prompts,
        params=sampling_params(body, chat=chat, json_grammar=json_grammar),
        n=n,
        stream=_opt(body, "stream", bool) or False,
        include_usage=include_usage,
        echo=_opt(body, "echo", bool) or False,
    )


def completion_prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """`prompt` as a string, a list of strings, a token list, or a list of token lists."""
    return _text_or_tokens(body.get("prompt"), "prompt")


def embedding_inputs(value: object) -> list[str | list[int]]:
    """`input` for /v1/embeddings: the same four shapes as a completion prompt."""
    return _text_or_tokens(value, "input")


def _text_or_tokens(prompt: object, param: str) -> list[str | list[int]]:
    if prompt == "" or (isinstance(prompt, list) and "" in prompt):
        raise bad_request(f"{param} must not be an empty string", param)
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_token(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad_request(f"{param} must be a string, a list of strings, or a list of token ids", param)


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _opt(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad_request(f"{key} must be an integer", key)
    if kind is bool and not isinstance(value, bool):
        raise bad_request(f"{key} must be a boolean", key)
    return value


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean field (400 naming it if it is not one); `default` when absent or null."""
    value = _opt(body, key, bool)
    return default if value is None else value


def _num(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{key} must be a number", key)
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise bad_request(f"{key} must be a finite number", key)
    return number


def _logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > 1024:
        raise bad_request("logit_bias must map token ids to numbers (at most 1024)", "logit_bias")
    pairs = []
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):  # int() also takes "1_0", " 7", "١"
            raise bad_request(f"logit_bias key {key[:20]!r} is not a token id", "logit_bias")
        token_id = int(key)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad_request("logit_bias values must be numbers between -100 and 100", "logit_bias")
        pairs.append((token_id, float(bias)))
    return tuple(pairs)


def _completion_logprobs(body: dict[str, Any]) -> int | None:
    """/v1/completions' `logprobs` is the number of alternatives (chat calls it top_logprobs)."""
    top = _opt(body, "logprobs", int)
    if top is not None and not 0 <= top <= 20:
        raise bad_request("logprobs must be between 0 and 20", "logprobs")
    return top


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    wanted = _opt(body, "logprobs", bool)
    top = _opt(body, "top_logprobs", int)
    if top is not None and not wanted:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if wanted else None


def response_format_schema(response_format: object) -> tuple[bool, dict | None]:
    """What a response_format asks for: (False, None) for none or text, (True, None) for
    json_object (any JSON), (True, schema) for json_schema; every bad one a 400."""
    if response_format is None:
        return False, None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return False, None
    if kind not in ("json_object", "json_schema"):
        raise bad_request("response_format.type must be text, json_object or json_schema", "response_format")
    if kind == "json_object":
        return True, None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise bad_request("response_format.json_schema.schema must be a JSON schema object", "response_format")
    return True, schema


def _grammar(response_format: object, json_grammar: JsonGrammar) -> Grammar | None:
    """response_format -> grammar: text (none), json_object, or json_schema; every bad one a 400."""
    wants_json, schema = response_format_schema(response_format)
    if not wants_json:
        return None
    try:
        return json_grammar(schema)
    except InvalidParam as exc:
        raise bad_request(str(exc), "response_format") from None


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive(body: dict[str, Any]) -> float | None:
    """Ollama's `keep_alive`: seconds, or "30s"/"5m"/"1h"; negative asks to keep the model loaded.
    Finite values only; the ModelManager clamps them to the operator's limits (max_keep_alive_s)."""
    value = body.get("keep_alive")
    if value is None:
        return None
    seconds = None
    if isinstance(value, str) and value[-1:] in _DURATION_UNITS and len(value) <= 32:
        try:
            seconds = float(value[:-1]) * _DURATION_UNITS[value[-1]]
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) <= 1e308 else None  # a huge JSON integer overflows float()
    if seconds is None or not math.isfinite(seconds):
        raise bad_request('keep_alive must be a finite number of seconds or a duration such as "5m"', "keep_alive")
    return seconds
