"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one intra-op thread, then restore the count.

    Two uses: tiny models on a shared 2-core machine, where threads cost more than they give; and exact
    (``atol=0``) comparisons between batch shapes, which multi-threaded MKL GEMMs do not give: with 2
    threads MKL splits a ``(128, 1025) @ (1025, frames)`` product differently for 1 and 3 clips, and the sums
    round differently (seen on Intel Xeon; the AMD machine before it happened to agree).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
