"""Which quantisation to pull when a repository offers several: the plan's rule of thumb.

Prefer Q4_K_M. When memory is plentiful (a higher quant uses at most half of the usable
memory), take the best such higher quant; when Q4_K_M does not fit, take the largest
lower quant that does; when nothing fits, say so.
"""
from __future__ import annotations

DEFAULT = "Q4_K_M"
HIGHER = ("Q8_0", "Q6_K", "Q5_K_M")  # best first
LOWER = ("Q4_K_S", "Q3_K_L", "Q3_K_M", "IQ4_XS", "Q3_K_S", "IQ3_M", "Q2_K")  # best first
GIB = 2**30


class NothingFits(ValueError):
    pass


def choose_quant(sizes: dict[str, int], usable_bytes: int) -> tuple[str, str]:
    """(quant, reason) from the file size of each offered quant and the memory that will hold it."""
    if not sizes:
        raise ValueError("no quantisations offered")
    usable = f"{usable_bytes / GIB:.1f} GiB usable"
    for quant in HIGHER:
        if quant in sizes and sizes[quant] <= usable_bytes / 2:
            return quant, (f"{quant}: {sizes[quant] / GIB:.1f} GiB uses {sizes[quant] / usable_bytes:.0%} of "
                           f"{usable} (plenty: a higher-quality quant)")
    if DEFAULT in sizes and sizes[DEFAULT] <= usable_bytes:
        return DEFAULT, f"{DEFAULT}: {sizes[DEFAULT] / GIB:.1f} GiB fits {usable} (the default)"
    for quant in LOWER:
        if quant in sizes and sizes[quant] <= usable_bytes:
            return quant, (f"{quant}: {DEFAULT} does not fit {usable}; {quant} at {sizes[quant] / GIB:.1f} GiB "
                           "is the largest that does (tight: lower quality)")
    smallest = min(sizes, key=sizes.get)
    if sizes[smallest] <= usable_bytes:
        return smallest, f"{smallest}: the only offered quant that fits {usable}"
    raise NothingFits(f"no offered quantisation fits {usable} (smallest: {smallest}, "
                      f"{sizes[smallest] / GIB:.1f} GiB)")
