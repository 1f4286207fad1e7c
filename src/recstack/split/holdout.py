"""User hold-out split: strong generalisation (Marlin 2004; Liang et al., WWW 2018, Mult-VAE).

A random set of test users is removed from training altogether. At test time each test
user's history is split at random: a `fold_in` fraction is shown to the model
(`Split.test_fold_in`, part of `split.history("test")`, never trained on) and the rest is
what the model must predict (`Split.test`).

Validation users are held out the same way, but their fold-in part goes to train: model
selection on validation users is therefore weak generalisation (their visible events are
training data), while the test protocol stays strict. Models that can only score users seen
at fit time can still be tuned this way.

Counts per held-out user with n events: the shown part has round_half_up(n * fold_in) events,
at least 1 when fold_in > 0 and at most n - 1 when n >= 2, so a held-out user with two or more
events always has something to show and something to predict. A held-out user with a single
event shows it (when fold_in > 0) and is then skipped at evaluation. The numbers of test and
validation users are round_half_up(fraction * active users), drawn without overlap.
"""

from __future__ import annotations

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.split.base import Split
from recstack.split.random import check_fraction, round_half_up, shuffled_rank


def fold_in_counts(n: np.ndarray, fold_in: float) -> np.ndarray:
    """Events shown to the model per held-out user with `n` events (rule in the module docstring)."""
    n = np.asarray(n, dtype=np.int64)
    shown = round_half_up(n * fold_in)
    if fold_in > 0:
        shown = np.maximum(shown, np.minimum(n, 1))
    return np.where(n >= 2, np.minimum(shown, n - 1), shown)


def user_holdout_split(
    data: Interactions,
    rng: np.random.Generator,
    valid_users: float = 0.1,
    test_users: float = 0.1,
    fold_in: float = 0.8,
) -> Split:
    """Hold out `test_users` / `valid_users` fractions of the active users; see the module docstring."""
    valid_share = check_fraction(valid_users, "valid_users")
    test_share = check_fraction(test_users, "test_users")
    fold_in = check_fraction(fold_in, "fold_in")
    if valid_share + test_share >= 1.0:
        raise RecstackError(f"valid_users + test_users must leave users for training, got "
                            f"{valid_share} + {test_share} >= 1")
    active = data.active_users()
    chosen = rng.permutation(active)
    n_test = int(round_half_up(len(active) * test_share))
    n_valid = int(round_half_up(len(active) * valid_share))
    role = np.zeros(data.n_users, dtype=np.int8)  # 0 train, 1 valid, 2 test
    role[chosen[:n_test]] = 2
    role[chosen[n_test:n_test + n_valid]] = 1

    rank = shuffled_rank(data, rng)
    shown = rank < fold_in_counts(data.user_counts(), fold_in)[data.user]
    row_role = role[data.user]
    fold_in_rows = (row_role == 2) & shown
    test_rows = (row_role == 2) & ~shown
    valid_rows = (row_role == 1) & ~shown
    train_rows = (row_role == 0) | ((row_role == 1) & shown)
    return Split(
        data.take(train_rows), data.take(valid_rows), data.take(test_rows),
        method="user_holdout",
        params={"valid_users": valid_share, "test_users": test_share, "fold_in": fold_in},
        test_fold_in=data.take(fold_in_rows),
    )
