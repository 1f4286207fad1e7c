"""Row gathers with a deterministic backward.

`table[index]` differentiates through `index_put_(accumulate=True)`, whose cpu kernel adds
duplicate rows in a thread-dependent order, so two runs with one seed drift apart by float
rounding. `index_select` differentiates through `index_add_`, which sums in a fixed order.
"""

from __future__ import annotations

import torch


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`table[index]` for an index of any shape: (*index.shape, *table.shape[1:])."""
    return torch.index_select(table, 0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])
