"""The quantisation a pull picks from the memory at hand."""
from __future__ import annotations

import pytest

from localllm.models.quant_choice import GIB, NothingFits, choose_quant

SIZES = {"Q2_K": int(3.2 * GIB), "Q3_K_M": int(4.0 * GIB), "Q4_K_M": int(4.9 * GIB), "Q6_K": int(6.6 * GIB),
         "Q8_0": int(8.5 * GIB)}


def test_default_when_it_fits_but_nothing_higher_fits_twice():
    quant, reason = choose_quant(SIZES, 10 * GIB)
    assert quant == "Q4_K_M" and "default" in reason


def test_plenty_of_memory_takes_the_best_higher_quant():
    assert choose_quant(SIZES, 64 * GIB)[0] == "Q8_0"
    assert choose_quant(SIZES, 14 * GIB)[0] == "Q6_K"  # Q8_0 would use more than half


def test_tight_memory_takes_the_largest_lower_quant_that_fits():
    quant, reason = choose_quant(SIZES, int(4.5 * GIB))
    assert quant == "Q3_K_M" and "tight" in reason


def test_nothing_fits_is_an_error_that_says_so():
    with pytest.raises(NothingFits, match="no offered quantisation fits"):
        choose_quant(SIZES, 2 * GIB)
