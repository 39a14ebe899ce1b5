"""Per-request samplers over llama.cpp's logits rows.

Three kinds, picked by the request's parameters:
- `GreedySampler`: argmax over the logits row (a numpy view, no copy): ~40 us,
  where llama_sampler_sample first fills a 262k-entry candidate array (~650 us).
- `ChainSampler`: llama.cpp's sampler chain (top-k first, then penalties, top-p,
  min-p, temperature, seeded dist). llama_sampler_sample would copy the whole row
  into a candidate array and partially sort it; instead `top_candidates` finds a
  small superset of the top k in numpy (~60 us over 128k tokens) and the chain runs on
  that: the same candidates in the same order, so the same draws for a seed.
- `GrammarSampler`: for response_format. A grammar check over all 262k tokens
  costs most of a second per token, so the grammar first sees only the best
  `GRAMMAR_PREFILTER` candidates and the whole vocabulary only when none of
  those is allowed; the rest of the chain then runs on what the grammar kept.

Each first adds the request's `LogitBias` (logit_bias, ignore_eos) to the row in place.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

import llama_cpp.llama_cpp as ll

from localllm.engine.errors import BackendError
from localllm.engine.llama_backend.grammar import CompiledGrammars
from localllm.types import SamplingParams, TokenLogprob

# Used when the request sets no top_k: penalties and the final pick then touch a
# few dozen candidates instead of the whole vocabulary (llama.cpp's default too).
DEFAULT_TOP_K = 40
GRAMMAR_PREFILTER = 512
PREFILTER_ROWS = 64
"""`top_candidates` groups the row into columns of this many tokens: few enough that a
128k row still has ~2,000 groups for 512 candidates."""
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # struct llama_token_data


class Sampler:
    def sample(self, ctx: ll.llama_context_p, row: int, logits: np.ndarray) -> int:
        """Picks the next token from batch row `row`, whose logits `logits` views."""
        raise NotImplementedError

    def free(self) -> None:
        pass


class LogitBias:
    """(token id, bias) pairs added to a logits row in place, before any sampler reads it, so no
    sampler chain carries a logit-bias sampler. The row is ours until the next decode."""

    def __init__(self, biases: Sequence[tuple[int, float]]) -> None:
        self._token_ids = np.array([t for t, _ in biases], dtype=np.int64)
        self._values = np.array([b for _, b in biases], dtype=np.float32)

    def apply(self, logits: np.ndarray) -> None:
        if self._token_ids.size:
            logits[self._token_ids] += self._values


class GreedySampler(Sampler):
    def __init__(self, bias: LogitBias) -> None:
        self._bias = bias

    def sample(self, ctx: ll.llama_context_p, row: int, logits: np.ndarray) -> int:
        self._bias.apply(logits)
        return int(logits.argmax())


class ChainSampler(Sampler):
    """The chain over the best `top_k` candidates only (the chain's first real step is top-k).

    When the prefilter finds too few candidates (NaN logits), llama_sampler_sample runs over
    the whole (biased) row."""

    def __init__(self, chain: ll.llama_sampler_p, bias: LogitBias, top_k: int) -> None:
        self._chain = chain
        self._bias = bias
        self._top_k = top_k

    def sample(self, ctx: ll.llama_context_p, row: int, logits: np.ndarray) -> int:
        self._bias.apply(logits)
        token_ids = top_candidates(logits, self._top_k)
        if token_ids.size < min(self._top_k, logits.size):
            return ll.llama_sampler_sample(self._chain, ctx, row)
        candidates = _candidates(token_ids, logits[token_ids])
        token = int(candidates["id"][_apply(self._chain, candidates)])
        ll.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        ll.llama_sampler_free(self._chain)


def top_candidates(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of a superset of the `k` largest logits (usually not many more), unsorted.

    The row is viewed as PREFILTER_ROWS rows of n columns; a column is a group of
    tokens. The k-th largest column maximum is a lower bound of the k-th largest logit
    (k columns each hold a value at least that large), so every top-k logit passes it,
    and only the columns whose maximum passes need a look. The max runs down contiguous
    rows (vectorised); a sort of the whole row never happens. Falls back to the exact
    argpartition when the row has too few columns."""
    size = logits.size
    whole = size - size % PREFILTER_ROWS
    num_columns = whole // PREFILTER_ROWS
    if k >= num_columns:
        return np.argpartition(logits, -k)[-k:] if k < size else np.arange(size)
    grid = logits[:whole].reshape(PREFILTER_ROWS, num_columns)  # token id = row * num_columns + column
    maxima = grid.max(axis=0)
    threshold = np.partition(maxima, -k)[-k]
    columns = np.flatnonzero(maxima >= threshold)
    rows, picked = np.nonzero(grid[:, columns] >= threshold)
    found = rows * num_columns + columns[picked]
    if whole < size:
        found = np.concatenate((found, whole + np.flatnonzero(logits[whole:] >= threshold)))
    return found


class GrammarSampler(Sampler):
    """Grammar on a prefiltered candidate list, then the chain, both by llama_sampler_apply."""

    def __init__(self, grammar: ll.llama_sampler_p, chain: ll.llama_sampler_p, bias: LogitBias,
                 eog_token_ids: Sequence[int]) -> None:
        self._grammar = grammar
        self._chain = chain
        self._bias = bias
        # Once the grammar is complete only end-of-generation is allowed: always offer it.
        self._eog_ids = np.array(eog_token_ids, dtype=np.int64)

    def sample(self, ctx: ll.llama_context_p, row: int, logits: np.ndarray) -> int:
        self._bias.apply(logits)
        best = np.union1d(top_candidates(logits, GRAMMAR_PREFILTER), self._eog_ids)
        token = self._pick(best, logits)
        if token is None:  # nothing the model likes is allowed: ask the grammar about every token
            token = self._pick(np.arange(logits.size), logits)
        if token is None:
            raise BackendError("the output grammar allows no token here")
        ll.llama_sampler_accept(self._grammar, token)
        ll.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, token_ids: np.ndarray, logits: np.ndarray) -> int | None:
        candidates = _candidates(token_ids, logits[token_ids])
        _apply(self._grammar, candidates)
        allowed = np.ascontiguousarray(candidates[np.isfinite(candidates["logit"])])
        if allowed.size == 0:
            return None
        selected = _apply(self._chain, allowed)
        return int(allowed["id"][selected])

    def free(self) -> None:
        ll.llama_sampler_free(self._grammar)
        ll.llama_sampler_free(self._chain)


def _candidates(token_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    out = np.empty(token_ids.size, dtype=_TOKEN_DATA)
    out["id"], out["logit"], out["p"] = token_ids, logits, 0.0
    return out


def _apply(sampler: ll.llama_sampler_p, candidates: np.ndarray) -> int:
    """Runs a sampler over a candidate array in place; returns the selected index (or -1)."""
    array = ll.llama_token_data_array(candidates.ctypes.data_as(ll.llama_token_data_p), candidates.size, -1, False)
    ll.llama_sampler_apply(sampler, ctypes.byref(array))
    return array.selected


def build_sampler(params: SamplingParams, num_vocab: int, eog_token_ids: Sequence[int],
                  grammars: CompiledGrammars) -> Sampler:
    """The cheapest sampler that honours every parameter of the request; a grammar is
    cloned from its compiled form in `grammars` (parsed once per distinct grammar)."""
    biases = list(params.logit_bias)
    if params.ignore_eos:  # as llama.cpp does: end-of-generation tokens can never be drawn
        biases += [(t, float("-inf")) for t in eog_token_ids]
    bias = LogitBias(biases)
    has_penalties = params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
    if params.is_greedy and not has_penalties and params.grammar is None:
        return GreedySampler(bias)
    if params.grammar is not None:
        return GrammarSampler(grammars.sampler(params.grammar), _chain(params, num_vocab), bias,
                              eog_token_ids)
    return ChainSampler(_chain(params, num_vocab), bias, params.top_k or DEFAULT_TOP_K)


def _chain(params: SamplingParams, num_vocab: int) -> ll.llama_sampler_p:
    """top-k, penalties, then greedy or top-p / min-p / temperature / dist; logit biases are
    applied to the row before the chain runs (LogitBias)."""
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    add = lambda s: ll.llama_sampler_chain_add(chain, s)  # noqa: E731
    add(ll.llama_sampler_init_top_k(params.top_k or DEFAULT_TOP_K))
    if params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
        add(ll.llama_sampler_init_penalties(num_vocab, params.penalty_last_n, params.repeat_penalty,
                                            params.frequency_penalty, params.presence_penalty))
    if params.is_greedy:
        add(ll.llama_sampler_init_greedy())
        return chain
    if params.top_p < 1.0:
        add(ll.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(ll.llama_sampler_init_min_p(params.min_p, 1))
    add(ll.llama_sampler_init_temp(params.temperature))
    seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(ll.llama_sampler_init_dist(seed))
    return chain


def logprob_of(logits: np.ndarray, token_id: int, num_top: int) -> TokenLogprob:
    """Log-softmax of one row for the chosen token and the `num_top` best ones."""
    peak = float(logits.max())
    log_norm = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    top: tuple[tuple[int, float], ...] = ()
    if num_top:
        best = np.argpartition(logits, -num_top)[-num_top:]
        best = best[np.argsort(-logits[best])]
        top = tuple((int(t), float(logits[t]) - log_norm) for t in best)
    return TokenLogprob(token_id, float(logits[token_id]) - log_norm, top)
