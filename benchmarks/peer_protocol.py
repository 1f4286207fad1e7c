"""The evaluation protocols of the peer libraries, and the check every peer benchmark runs before it
prints an accuracy ratio (imported by the scripts beside it; see BENCHMARKS.md).

A ratio, or a side-by-side row, between recstack and a peer means something only when both sides
ranked the same candidates for the same users, read the same history and masked the same items.
`recstack.experiment.compare.Protocol` names those settings; the peers' values are read off their
code here, once:

- RecBole 1.2.1, protocol A (general models, the peer driver `run_recbole.py`): a model scores from
  the interaction matrix of the training part it was built with, so test users are ranked from
  train only, while the full-sort evaluation masks every item of the sampler's `used_ids` for the
  test phase, i.e. train + valid (`FullSortEvalDataLoader`: history = used items - positives).
- RecBole 1.2.1, protocol B (sequential models): the test input is the sequence before the target
  (train + valid), and `FullSortEvalDataLoader` masks nothing for sequential models.
"""

from __future__ import annotations

from recstack.errors import RecstackError
from recstack.experiment.compare import Protocol, require_same_protocol

RECBOLE = {
    "A": Protocol(test_history="train", test_masked="train + valid"),
    "B": Protocol(mask_history=False, test_history="train + valid", test_masked="none"),
}
# recstack run with RecBole's choices (experiment config keys)
RECSTACK_AS_RECBOLE = {"A": {"test_history": "train", "mask_history": True},
                       "B": {"test_history": "train_valid", "mask_history": False}}


def recbole_protocol(result: dict) -> Protocol:
    """The protocol of a result file written by run_recbole.py (its `protocol` field: A or B)."""
    name = result.get("protocol")
    if name not in RECBOLE:
        raise RecstackError(f"no recorded evaluation protocol for RecBole protocol {name!r}; known: A, B")
    return RECBOLE[name]


def state(name: str, protocol: Protocol) -> str:
    """The line a benchmark prints for each side."""
    return f"protocol of {name}: {protocol.describe()}"


def ratio_refusal(ours: tuple[str, Protocol], theirs: tuple[str, Protocol], what: str = "an accuracy ratio"
                  ) -> str | None:
    """None when the two sides were measured alike, else the one line to print instead of the ratio."""
    try:
        require_same_protocol(what, ours, theirs)
    except RecstackError as refusal:
        return f"refused: {refusal}"
    return None
