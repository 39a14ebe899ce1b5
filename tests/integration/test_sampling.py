"""The sampler chain over a numpy top-k prefilter draws exactly what llama.cpp's full-row
sampling draws, on real logits of the bundled model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.engine.llama_backend import sampling
import llama_cpp.llama_cpp as ll
from localllm.types import SamplingParams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rows(model_path: Path) -> np.ndarray:
    """Logits after each token of a sentence: 262k-wide real rows."""
    backend = LlamaBackend(BackendConfig(model_path, 1024, 1, 512, 2))
    try:
        token_ids = backend.tokenize("Once upon a time, in a small village by the sea, there lived an old fisherman")
        yield backend.logits_for(token_ids)
    finally:
        backend.close()


def reference_draws(params: SamplingParams, rows: np.ndarray) -> list[int]:
    """llama.cpp's own path: logit biases in the chain, the chain over every token of the row."""
    chain = sampling._chain(params, rows.shape[1])  # noqa: SLF001
    biases = list(params.logit_bias)
    if biases:  # a chain of its own in front, as llama.cpp's logit-bias sampler
        bias_array = (ll.llama_logit_bias * len(biases))(*biases)
        front = ll.llama_sampler_init_logit_bias(rows.shape[1], len(biases), bias_array)
    draws = []
    for row in rows:
        candidates = sampling._candidates(np.arange(row.size), row.copy())  # noqa: SLF001
        if biases:
            sampling._apply(front, candidates)  # noqa: SLF001
        token = int(candidates["id"][sampling._apply(chain, candidates)])  # noqa: SLF001
        ll.llama_sampler_accept(chain, token)
        draws.append(token)
    ll.llama_sampler_free(chain)
    if biases:
        ll.llama_sampler_free(front)
    return draws


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, seed=7),
    SamplingParams(temperature=1.3, top_p=0.9, min_p=0.02, seed=11, repeat_penalty=1.2),
    SamplingParams(temperature=0.7, top_k=500, seed=3, frequency_penalty=0.5),
    SamplingParams(temperature=1.0, top_k=2, seed=5, logit_bias=((236764, 5.0), (1, -100.0))),
])
def test_prefiltered_chain_draws_what_the_full_row_draws(rows: np.ndarray, params: SamplingParams):
    sampler = sampling.build_sampler(params, rows.shape[1], (), grammars=None)
    assert isinstance(sampler, sampling.ChainSampler)
    ours = [sampler.sample(None, 0, row.copy()) for row in rows]
    sampler.free()
    assert ours == reference_draws(params, rows)


def test_top_candidates_hold_the_top_k_of_real_rows(rows: np.ndarray):
    for row in rows:
        for k in (1, 40, 512):
            found = set(sampling.top_candidates(row, k).tolist())
            assert set(np.argsort(-row, kind="stable")[:k].tolist()) <= found
            assert len(found) < 8 * k + 64  # a prefilter, not the whole row
