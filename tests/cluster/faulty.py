"""Models whose worker dies once, for the Ray fault tests: imported by the Ray workers as
`cluster.faulty` (the cluster tests put tests/ on their PYTHONPATH). The first call in any process
creates a marker file in $RECSTACK_TEST_MARKERS and kills that process, as the OOM killer or a lost
node would; every later call, in the restarted task, finds the marker and works."""

from __future__ import annotations

import os
from pathlib import Path

from recstack.models.neighborhood.ease import EASE


def die_once(name: str) -> None:
    marker = Path(os.environ["RECSTACK_TEST_MARKERS"]) / name
    if not marker.exists():
        marker.touch()
        os._exit(1)  # no exception, no clean-up: the worker process is gone


class ScoreDiesOnce:
    """Wraps a fitted scorer; the first `score` in a Ray worker kills that worker."""

    def __init__(self, model, marker: str) -> None:
        self.model, self.marker = model, marker

    def score(self, users, history, items=None):
        die_once(self.marker)
        return self.model.score(users, history, items)


class EASEFitDiesOnce(EASE):
    """EASE whose first fit (a tuning trial's) kills its worker."""

    def fit(self, train, valid=None, **kwargs):
        die_once(f"fit-reg-{self.config.reg:g}")
        return super().fit(train, valid, **kwargs)
