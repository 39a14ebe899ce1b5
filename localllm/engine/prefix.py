"""Longest common prefix over token sequences: the prefix cache in memory (slots.py) and the
prefix states on disk (cache/prefix_states.py) both match prompts with it."""
from __future__ import annotations

from collections.abc import Sequence


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists.

    Binary search over slice equality: the comparisons run in C, so a
    4,000-token prompt costs about a dozen list compares instead of a Python loop.
    """
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def kv_cells_in_use(sequences: Sequence[Sequence[int]]) -> int:
    """Distinct KV cells needed by these sequences when shared prefixes are stored once.

    Sorting puts sequences with common prefixes next to each other; the size of
    their prefix tree is the total length less each neighbour's common prefix.
    """
    ordered = sorted((list(s) for s in sequences if s))
    total = sum(len(s) for s in ordered)
    shared = sum(common_prefix_len(x, y) for x, y in zip(ordered, ordered[1:]))
    return total - shared
