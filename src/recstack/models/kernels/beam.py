"""Trie-constrained beam search: the decoding of generative recommenders (TIGER, ColaRec) that write
an item's code token by token and may only write codes of real items.

The network is the caller's: `log_probs(level, prefix, open)` returns the log-probabilities of
level `level`'s token values after each beam's prefix. Everything else is here: the trie masks
(only prefixes of real codes grow), history items banned at the token that would complete them,
beams whose (shorter) code has ended competing with longer prefixes, and the ranking of the
finished items. Selection keeps the best `width` candidates per row, ties to the lower beam, then
the lower token (a stable sort), so results never depend on the thread count.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["constrained_beam_search"]


def constrained_beam_search(
    log_probs: Callable[[int, torch.Tensor, np.ndarray], torch.Tensor],
    trie: Any,
    level_sizes: Sequence[int],
    n_rows: int,
    width: int,
    *,
    device: torch.device | str = "cpu",
    banned: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search over the codes of `trie` for `n_rows` independent queries (users).

    - `log_probs(level, prefix, open)`: `prefix` is an int64 tensor (n_rows, beams, level) on
      `device` holding each beam's token values so far (-1 after its code has ended); `open` is a
      bool numpy (n_rows, beams), the beams that still extend a prefix. Returns a float tensor
      (n_rows, beams, level_sizes[level]); only open beams' rows are read, and scores add up in
      its dtype (float32 or float64).
    - `trie`: a `PrefixTrie` (`allowed_mask`, `step`, `item_at`, `depth`, `n_items`).
    - `banned`: sorted int64 keys `row * trie.n_items + item` of items never to emit (a user's
      history): that candidate gets -inf at the token that would complete its code.

    Returns (items (n_rows, <= width) int64, their summed log-probabilities float32), best first;
    -1 / -inf where fewer items were found. Codes may differ in length (prefix-free): a beam that
    has completed an item stays in the beam with its score and competes with longer prefixes (a
    prefix's log-probability bounds those of its completions).
    """
    n_items, depth = trie.n_items, trie.depth
    scores: torch.Tensor | None = None
    nodes = np.zeros((n_rows, 1), dtype=np.int64)  # trie node at the current depth; -1 = dead
    items = np.full((n_rows, 1), -1, dtype=np.int64)  # completed item, -1 while still a prefix
    prefix = torch.zeros((n_rows, 1, 0), dtype=torch.int64, device=device)
    for level in range(depth):
        beams = nodes.shape[1]
        size = int(level_sizes[level])
        open_ = (items < 0) & (nodes >= 0)
        finished = items >= 0
        logp = log_probs(level, prefix, open_)
        if scores is None:
            scores = torch.zeros((n_rows, 1), dtype=logp.dtype, device=logp.device)
        flat_nodes = np.where(open_, nodes, -1).ravel()
        allowed = trie.allowed_mask(level, flat_nodes, size)
        if banned is not None and len(banned):
            r, token = np.nonzero(allowed)
            done = trie.item_at(level + 1, trie.step(level, flat_nodes[r], token))
            hit = done >= 0
            keys = (r[hit] // beams) * n_items + done[hit]
            where = np.minimum(np.searchsorted(banned, keys), len(banned) - 1)
            is_banned = banned[where] == keys
            allowed[r[hit][is_banned], token[hit][is_banned]] = False
        mask = torch.from_numpy(allowed.reshape(n_rows, beams, size)).to(logp.device)
        cand = torch.where(mask, scores[:, :, None] + logp, torch.tensor(-torch.inf, dtype=logp.dtype,
                                                                         device=logp.device))
        columns = size
        if finished.any():  # one more column per beam: a finished beam carries over unchanged
            stay = torch.where(torch.from_numpy(finished).to(logp.device), scores,
                               torch.tensor(-torch.inf, dtype=logp.dtype, device=logp.device))
            cand = torch.cat([cand, stay[:, :, None]], dim=2)
            columns = size + 1
        flat = cand.reshape(n_rows, -1)
        keep = min(width, flat.shape[1])
        new_scores, best = torch.sort(flat, dim=1, descending=True, stable=True)  # ties: lower beam, token
        new_scores, best = new_scores[:, :keep], best[:, :keep]
        best_np = best.cpu().numpy()
        parent, token = best_np // columns, best_np % columns
        stays = token == size  # never true without the extra column
        alive = torch.isfinite(new_scores).cpu().numpy()
        parent_nodes = np.take_along_axis(nodes, parent, axis=1)
        parent_items = np.take_along_axis(items, parent, axis=1)
        child = trie.step(level, parent_nodes, np.where(stays, 0, token))
        nodes = np.where(stays | ~alive, np.where(alive, parent_nodes, -1), child)
        items = np.where(stays, parent_items, np.where(alive, trie.item_at(level + 1, np.maximum(child, 0)), -1))
        items[~alive] = -1
        new_token = torch.from_numpy(np.where(stays, -1, token)).to(device)
        prefix = torch.cat([prefix.gather(1, torch.from_numpy(parent).to(device)[:, :, None].expand(-1, -1, level)),
                            new_token[:, :, None]], dim=2)
        scores = torch.where(torch.from_numpy(alive).to(new_scores.device), new_scores,
                             torch.tensor(-torch.inf, dtype=new_scores.dtype, device=new_scores.device))
    values = scores.cpu().numpy() if scores is not None else np.zeros((n_rows, 1))
    values = np.where(items >= 0, values, -np.inf)
    order = np.argsort(-values, axis=1, kind="stable")
    items, values = np.take_along_axis(items, order, axis=1), np.take_along_axis(values, order, axis=1)
    items[~np.isfinite(values)] = -1
    return items, values.astype(np.float32)
