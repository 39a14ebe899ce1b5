"""LogitBias adds logit_bias / ignore_eos to a row in place; GreedySampler picks from the biased row."""
from __future__ import annotations

import numpy as np
import pytest

sampling = pytest.importorskip("localllm.engine.llama_backend.sampling")


def test_bias_is_added_in_place_once_and_an_empty_bias_changes_nothing():
    row = np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32)
    sampling.LogitBias([(0, 5.0), (2, float("-inf"))]).apply(row)
    assert row.tolist() == [6.0, 2.0, float("-inf"), 0.5]
    untouched = row.copy()
    sampling.LogitBias([]).apply(row)
    assert row.tolist() == untouched.tolist()


def test_greedy_sampler_picks_the_best_token_of_the_biased_row():
    row = np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32)
    assert sampling.GreedySampler(sampling.LogitBias([])).sample(None, 0, row.copy()) == 2
    assert sampling.GreedySampler(sampling.LogitBias([(2, -10.0), (3, 1.0)])).sample(None, 0, row.copy()) == 1
