"""Scoring shared by the sequential models: user representations -> item scores, block by block.

A sequential model encodes each user's recent history into a vector h_u and scores item i as
<h_u, t_i> (+ b_i) against an item table. `score_in_chunks` runs the encoder on `chunk` users at a
time and writes their products straight into the returned (B, C) array, so nothing larger than
the block the evaluator asked for is materialised, for any catalogue size. `embed_in_chunks` does
the same for the representations themselves, and `require_sequences` refuses next-item training
windows without a single user to learn from. `SequenceWindowFields` is the config field that every
model trained on `SequenceBatches` shares: which windows an epoch trains on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pydantic import BaseModel, PositiveInt, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.train.sequences import PAD, SequenceBatches, TrainWindows


class SequenceWindowFields(BaseModel):
    """Config mixin of the models trained on `SequenceBatches` (pass `**config.window_options()`)."""

    # which windows of each user's training events an epoch learns from (recstack.train.sequences):
    # "sliding" = windows of max_seq_len targets with stride max_seq_len, every training event a target
    # once per epoch; "latest" = the last max_seq_len + 1 events only (the SASRec paper); "prefixes" =
    # one row per event, predicted at the last slot from the events before it (RecBole's augmentation).
    # "sliding" is the default by time to accuracy on validation (docs/models/sasrec.md, "Training windows")
    train_windows: TrainWindows = "sliding"
    # sliding windows only: lay them back by this many events and learn each one's last train_stride
    # targets, so every target reads at least max_seq_len - train_stride earlier events (None =
    # max_seq_len, no overlap; 1 = every prefix, RecBole's augmentation); recstack.train.sequences
    train_stride: PositiveInt | None = None

    @model_validator(mode="after")
    def _stride_applies(self):
        if self.train_stride is not None:
            if self.train_windows != "sliding":
                raise ValueError(f"train_stride applies to train_windows='sliding' only "
                                 f"(train_windows is {self.train_windows!r})")
            length = getattr(self, "max_seq_len", None)
            if length is not None and self.train_stride > length:
                raise ValueError(f"train_stride ({self.train_stride}) must be at most max_seq_len ({length})")
        return self

    def window_options(self) -> dict:
        """The `SequenceBatches` keywords these fields set."""
        return {"windows": self.train_windows, "stride": self.train_stride}


def check_item_vocabulary(history: Interactions, n_items: int) -> None:
    """A fitted sequential model reads item indices: the history must use the training vocabulary."""
    if history.n_items != n_items:
        raise RecstackError(f"the history has {history.n_items} items but the model was fitted on {n_items}; "
                            "score with interactions that share the training item vocabulary")


def require_sequences(name: str, sequences: SequenceBatches) -> SequenceBatches:
    """`sequences` (training windows, see `recstack.train.sequences`), refused when no user has the
    two events a window needs; `name` is the model's, for the error."""
    if len(sequences.users) == 0:
        raise RecstackError(f"{name} needs at least one user with two or more training events "
                            "(one to read, one to predict); check the filters and split")
    return sequences


def trim_padding(tokens: np.ndarray) -> np.ndarray:
    """Drop leading columns that are padding in every row (at least one column stays)."""
    filled = np.flatnonzero((tokens != PAD).any(axis=0))
    return tokens[:, filled[0]:] if len(filled) else tokens[:, -1:]


def score_in_chunks(
    encode: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    table: np.ndarray,
    items: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """<encode(users)_b, table_i> (+ bias_i) for all items, candidates (C,) or per-user (B, C).

    `encode(user_indices)` returns the (b, d) float32 representations of up to `chunk` users;
    `table` is (n_items, d) with row i the item of index i.
    """
    users = np.asarray(users, dtype=np.int64)
    if items is not None:
        items = np.asarray(items, dtype=np.int64)
    width = len(table) if items is None else items.shape[-1]
    out = np.empty((len(users), width), dtype=np.float32)
    for start in range(0, len(users), chunk):
        part = slice(start, start + chunk)
        hidden = np.asarray(encode(users[part]), dtype=np.float32)
        if items is None:
            np.matmul(hidden, table.T, out=out[part])
            if bias is not None:
                out[part] += bias
        elif items.ndim == 1:
            np.matmul(hidden, table[items].T, out=out[part])
            if bias is not None:
                out[part] += bias[items]
        else:
            out[part] = np.einsum("bd,bcd->bc", hidden, table[items[part]])
            if bias is not None:
                out[part] += bias[items[part]]
    return out


def embed_in_chunks(encode: Callable[[np.ndarray], np.ndarray], users: np.ndarray, width: int,
                    chunk: int = 256) -> np.ndarray:
    """(B, width) float32 user representations, `encode(user_indices)` run on `chunk` users at a time."""
    users = np.asarray(users, dtype=np.int64)
    out = np.empty((len(users), width), dtype=np.float32)
    for start in range(0, len(users), chunk):
        part = slice(start, start + chunk)
        out[part] = encode(users[part])
    return out
