"""top_candidates: a superset of the k largest logits, on rows made to break it."""
from __future__ import annotations

import numpy as np
import pytest

from localllm.engine.llama_backend.sampling import PREFILTER_ROWS, top_candidates


def holds_top_k(row: np.ndarray, k: int, found: np.ndarray) -> bool:
    """Every id above the k-th largest value is found, and k ids at least that large (ties at
    the boundary may be broken either way)."""
    kth = np.sort(row)[-k]
    return set(np.flatnonzero(row > kth).tolist()) <= set(found.tolist()) and int((row[found] >= kth).sum()) >= k


@pytest.mark.parametrize("size", [1, 7, PREFILTER_ROWS * 3 + 5, 50_000, 128_256])
@pytest.mark.parametrize("k", [1, 2, 40, 512])
def test_top_k_is_always_inside(size: int, k: int):
    rng = np.random.default_rng(size * 1000 + k)
    for make in (
        lambda: rng.standard_normal(size).astype(np.float32),
        lambda: rng.integers(0, 3, size).astype(np.float32),           # heavy ties
        lambda: np.sort(rng.standard_normal(size)).astype(np.float32),  # the best all in the last blocks
        lambda: np.where(rng.random(size) < 0.5, -np.inf, rng.standard_normal(size)).astype(np.float32),
    ):
        row = make()
        assert holds_top_k(row, min(k, size), top_candidates(row, k))


def test_spread_best_logits_give_a_small_set():
    row = np.full(128_256, -5.0, dtype=np.float32)
    best = np.arange(40) * 3001 + 17
    row[best] = np.linspace(10, 20, 40)
    assert sorted(top_candidates(row, 40).tolist()) == best.tolist()


def test_clustered_best_logits_are_still_all_found():
    # The worst case for the block bound (the 40 best in one block): the set grows, never misses.
    row = np.full(128_256, -5.0, dtype=np.float32)
    row[1000:1040] = np.linspace(10, 20, 40)
    assert holds_top_k(row, 40, top_candidates(row, 40))
