"""Memory and counts as this machine and its messages need them: how much memory there is, a
refusal in one line before allocating what cannot fit, and sizes and counts printed safely (an
integer of thousands of digits from the Python API would make str() raise).

The estimate of a whole run from its config, which knows every component, is
`repgossip.footprint`; this module knows none, so the graph, the data and the models use it.
"""

from __future__ import annotations

import math
import os

from repgossip.errors import UsageError

FLOAT_BYTES = 4  # data and parameter rows are float32
SYNTHETIC_DEFAULT_SAMPLES = 200  # what the synthetic dataset uses when samples_per_worker is unset
_HUGE_BITS = 100  # past this an integer is shown as a power of two (str() fails past 4,300 digits)


def physical_memory_bytes() -> int:
    """This machine's RAM: what a single process can use at most, swap aside."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def count_text(n: int | float) -> str:
    """A count with thousands separators; huge integers (from the Python API) as ~2^k, since
    formatting an int of more than 4,300 digits raises."""
    if isinstance(n, int) and n.bit_length() > _HUGE_BITS:
        return f"~2^{n.bit_length() - 1}"
    return f"{n:,.0f}" if math.isfinite(n) else str(n)


def int_text(n: int) -> str:
    """An integer as the user wrote it, or ~2^k when too long to print (see count_text)."""
    return str(n) if n.bit_length() <= _HUGE_BITS else f"~2^{n.bit_length() - 1}"


def format_bytes(n: int | float) -> str:
    """Bytes as GiB for an error message, safe for integers too big for a float."""
    if isinstance(n, int) and n.bit_length() > _HUGE_BITS:
        return f"2^{n.bit_length() - 31} GiB"
    return f"{n / 2**30:,.1f} GiB"


def check_fits(need: int | float, what: str, advice: str) -> None:
    """Refuse in one line what needs more bytes than this machine has, before allocating any of it
    (a MemoryError or the kernel's OOM killer would end the run with no useful message)."""
    have = physical_memory_bytes()
    if need > have:
        raise UsageError(
            f"{what} needs ~{format_bytes(need)}, more than this machine's "
            f"{format_bytes(have)}; {advice}"
        )


def synthetic_bytes(workers: int, dim: int, rank: int, samples: int, test_samples: int) -> int:
    """The synthetic task's arrays: per worker (train + test) rows of dim float32 inputs plus a
    float32 target, the (dim, rank) representation and each worker's rank-sized head (float64)."""
    rows = workers * (samples + test_samples)
    return rows * (dim + 1) * FLOAT_BYTES + (dim * rank + workers * rank) * 8
