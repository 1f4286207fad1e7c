"""Testing recommenders, shipped with the package so a user's own model is checked like recstack's.

- `check_recommender(target, params)`: the contract every model passes (lifecycle, shapes,
  determinism, persistence without pickle, refit, abilities, a sanity bar on clustered data), on
  synthetic data with an item side table; one call for a registered name, a class or a
  `"package.module:Class"` string (scikit-learn's `check_estimator`, LensKit's component tests).
  `CONTRACT_CHECKS` names each check, so a test suite can parametrise over them.
- `assert_scores_equivalent`: the float tolerance every score comparison uses.

What recstack promises about scores, and what it does not: a float32 score may move in its last
bits with the CPU's kernels (AVX2, AVX-512, AMX, generic), the thread count, and a row's position
in a BLAS block (the same user twice in one block may round differently). So two score arrays of
the same model and inputs are *equivalent* when they agree within a small tolerance relative to
each row's scale, give the same items -inf, and rank the items identically except among items
whose scores are that close. Bit-identical scores are promised only for the same call on the same
machine (for example a model and its saved-and-loaded copy), never across shapes or kernels.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from recstack.abilities import DotProductScorer, ListRecommender, TrainedByEpochs, UserCoverage, UsesDataset, implements
from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.split.base import Split

# float32 carries 24 bits (~6e-8); deep models (attention, several layers) accumulate a few
# hundred ulps between kernels, still far below any difference a ranking could mean.
SCORE_RTOL = 1e-5


def assert_scores_equivalent(actual: np.ndarray, expected: np.ndarray, *, rtol: float = SCORE_RTOL,
                             what: str = "scores") -> None:
    """Raise AssertionError unless `actual` and `expected` are equivalent scores (see the module doc).

    The tolerance of a row is `rtol` times the largest finite |score| in that row of `expected`
    (scores near zero after cancellation are no more exact than the row's scale). Agreement within
    it is also the ranking promise: two items can swap places only when their scores are within
    twice the tolerance of each other, a near-tie."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != {expected.shape}")
    if actual.ndim == 1:
        actual, expected = actual[None], expected[None]
    if actual.ndim != 2:
        raise AssertionError(f"{what}: expected a (users, items) array, got {actual.ndim} dimensions")
    for name, array in (("actual", actual), ("expected", expected)):
        if np.isnan(array).any():
            raise AssertionError(f"{what}: {name} holds NaN")
    finite = np.isfinite(expected)
    if not np.array_equal(finite, np.isfinite(actual)) or not np.array_equal(actual[~finite], expected[~finite]):
        rows = np.flatnonzero((finite != np.isfinite(actual)).any(axis=1))
        raise AssertionError(f"{what}: the infinite entries differ (rows {rows[:5].tolist()})")
    scale = np.where(finite, np.abs(expected), 0.0).max(axis=1, initial=0.0)
    tolerance = rtol * np.maximum(scale, np.finfo(np.float32).tiny)
    gap = np.abs(np.where(finite, actual, 0.0) - np.where(finite, expected, 0.0)).max(axis=1, initial=0.0)
    bad = np.flatnonzero(gap > tolerance)
    if len(bad):
        row = bad[0]
        raise AssertionError(f"{what}: row {row} differs by {gap[row]:.3g}, more than {rtol:g} of its scale "
                             f"{scale[row]:.3g} ({len(bad)} rows differ)")


# ---- the contract -----------------------------------------------------------------------------

CLUSTER_WORDS = ("Comedy", "Horror", "Western", "Musical", "Romance", "Documentary")
CONTRACT_USERS = np.array([0, 5, 17, 42, 299, 5], dtype=np.int32)  # a repeated user on purpose


def clustered_interactions(n_users: int = 300, n_items: int = 120, n_clusters: int = 6, per_user: int = 25,
                           in_cluster: float = 0.85, seed: int = 0) -> Interactions:
    """Users of cluster c mostly consume items of cluster c (item i is in cluster i % n_clusters);
    popularity skews within clusters; timestamps order each user's events at random."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = np.arange(n_items) % n_clusters
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.5
    users, items, times = [], [], []
    for u in range(n_users):
        own = item_cluster == user_cluster[u]
        p = np.where(own, in_cluster / own.sum(), (1 - in_cluster) / (~own).sum()) * popularity
        users.append(np.full(per_user, u))
        items.append(rng.choice(n_items, size=per_user, replace=False, p=p / p.sum()))
        times.append(rng.permutation(per_user) + 1000 * u)
    return Interactions.from_ids(
        np.concatenate(users), np.concatenate(items),
        value=rng.integers(1, 6, n_users * per_user).astype(np.float32), timestamp=np.concatenate(times))


def shuffled_split(data: Interactions, seed: int = 0) -> Split:
    """Per-user 8:1:1 by a seeded shuffle (independent of `recstack.split`)."""
    rng = np.random.default_rng(seed)
    position = np.empty(len(data), dtype=np.float64)
    for u in range(data.n_users):
        lo, hi = data.indptr[u], data.indptr[u + 1]
        position[lo:hi] = rng.permutation(hi - lo) / max(hi - lo, 1)
    return Split(data.take(position < 0.8), data.take((position >= 0.8) & (position < 0.9)),
                 data.take(position >= 0.9), method="fixture")


def write_split_files(split: Split, folder: Path, *, user_id: str = "{}", item_id: str = "{}") -> dict[str, str]:
    """The parts of `split` as TSVs (user_id, item_id, rating, timestamp) in `folder`, for configs'
    `data: {files: ...}`; `user_id` / `item_id` format the raw ids (e.g. "u{}" for string ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in ("train", "valid", "test"):
        log = getattr(split, part)
        lines = ["user_id\titem_id\trating\ttimestamp"]
        lines += [f"{user_id.format(u)}\t{item_id.format(i)}\t{v:g}\t{t}" for u, i, v, t in
                  zip(log.users.ids[log.user], log.items.ids[log.item], log.value, log.timestamp)]
        paths[part] = str(folder / f"{part}.tsv")
        Path(paths[part]).write_text("\n".join(lines) + "\n")
    return paths


def clustered_item_table(ids: np.ndarray, n_clusters: int = 6) -> dict[str, np.ndarray]:
    """Titles, genres naming each item's cluster (every fourth item also "Drama") and years."""
    ids = [int(i) for i in ids]
    words = CLUSTER_WORDS[:n_clusters] if n_clusters <= len(CLUSTER_WORDS) else \
        tuple(f"Genre{c}" for c in range(n_clusters))
    return {"title": np.array([f"Film {i}" for i in ids], dtype=object),
            "genres": np.array([words[i % n_clusters] + ("|Drama" if i % 4 == 0 else "") for i in ids], dtype=object),
            "year": np.array([1980 + i % 17 for i in ids], dtype=np.int64)}


def clustered_dataset(data: Interactions | None = None) -> Dataset:
    """`data` (default `clustered_interactions()`) with its item side table."""
    data = clustered_interactions() if data is None else data
    return Dataset(data, item_table=clustered_item_table(data.items.ids))


@dataclass
class ContractCase:
    """One model under test: `make()` builds it unfitted (configured); the data it is checked on."""

    make: Callable[[], Any]
    dataset: Dataset = field(default_factory=clustered_dataset)
    _split: Split | None = None
    _fitted: Any = None
    _folder: Path | None = None

    @property
    def split(self) -> Split:
        if self._split is None:
            self._split = shuffled_split(self.dataset.interactions)
        return self._split

    def fresh(self, dataset: Dataset | None = None) -> Any:
        """A new unfitted model, given the side data when it reads any (as `recstack run` does)."""
        model = self.make()
        if isinstance(model, UsesDataset):
            model.use_dataset(dataset or self.dataset)
        return model

    def fit(self, model: Any) -> Any:
        return model.fit(self.split.train, self.split.valid)

    @property
    def fitted(self) -> Any:
        """One fitted model shared by the checks that only read it."""
        if self._fitted is None:
            self._fitted = self.fit(self.fresh())
        return self._fitted

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="recstack-contract-"))
        return self._folder


def _misspelt(name: str) -> str:
    middle = len(name) // 2
    return name[:middle] + name[middle + 1:]


def check_config_is_frozen_and_rejects_unknown_keys(case: ContractCase) -> None:
    from recstack.models.protocol import ConfigError, make_config

    model = case.make()
    cls, config = type(model), model.config
    try:
        config.seed = config.seed + 1
    except Exception:
        pass
    else:
        raise AssertionError(f"{cls.__name__}'s config accepted an assignment: configs must be frozen")
    longest = max(cls.Config.model_fields, key=len)
    typo = _misspelt(longest)
    try:
        make_config(cls.Config, {typo: 1})
    except ConfigError as exc:
        assert f"did you mean {longest!r}" in str(exc), f"no suggestion for {typo!r}: {exc}"
    else:
        raise AssertionError(f"{cls.__name__}.Config accepted the unknown key {typo!r}")


def check_score_before_fit_raises_not_fitted(case: ContractCase) -> None:
    from recstack.models.protocol import NotFittedError

    try:
        case.fresh().score(CONTRACT_USERS, case.split.train)
    except NotFittedError:
        return
    raise AssertionError("score before fit must raise NotFittedError")


def check_fit_returns_self(case: ContractCase) -> None:
    from recstack.train.options import FitOptions

    model = case.fresh()
    assert model.fit(case.split.train, case.split.valid, options=FitOptions(progress=False)) is model, \
        "fit(train, valid, options=...) must return the model itself"


def check_score_shape_dtype_and_no_nan(case: ContractCase) -> None:
    history = case.split.history("test")
    scores = case.fitted.score(CONTRACT_USERS, history)
    assert scores.shape == (len(CONTRACT_USERS), history.n_items), f"score returned shape {scores.shape}"
    assert scores.dtype == np.float32, f"score returned {scores.dtype}, not float32"
    assert not np.isnan(scores).any(), "score returned NaN"
    assert not np.isposinf(scores).any(), "score returned +inf"
    # the same user twice in one block: equal up to the rounding of its place in the block
    assert_scores_equivalent(scores[-1], scores[1], what="the same user twice in one block")


def check_score_returns_a_fresh_array(case: ContractCase) -> None:
    history = case.split.history("test")
    first = case.fitted.score(CONTRACT_USERS, history)
    expected = first.copy()
    first[:] = 12345.0  # the evaluator masks in place
    assert_scores_equivalent(case.fitted.score(CONTRACT_USERS, history), expected,
                             what="scores after the caller wrote into an earlier result")


def check_items_subset_equals_gathering_full_scores(case: ContractCase) -> None:
    history = case.split.history("test")
    model = case.fitted
    full = model.score(CONTRACT_USERS, history)
    subset = np.array([7, 0, history.n_items - 1, 3, 3, 64 % history.n_items])
    np.testing.assert_allclose(model.score(CONTRACT_USERS, history, items=subset), full[:, subset],
                               rtol=1e-5, atol=1e-6, err_msg="score(items=(C,)) != full scores gathered")
    per_user = np.random.default_rng(0).integers(0, history.n_items, size=(len(CONTRACT_USERS), 9))
    np.testing.assert_allclose(model.score(CONTRACT_USERS, history, items=per_user),
                               np.take_along_axis(full, per_user, axis=1), rtol=1e-5, atol=1e-6,
                               err_msg="score(items=(B, C)) != full scores gathered")


def check_dot_product_factors_make_the_scores(case: ContractCase) -> None:
    """A `DotProductScorer`'s queries and item vectors are what `score` multiplies: the evaluator ranks
    from them instead of calling `score` (`recstack.evaluate.fused`)."""
    model = case.fitted
    if not implements(model, DotProductScorer):
        return
    history = case.split.history("test")
    queries = model.user_queries(CONTRACT_USERS, history)
    vectors, bias = model.item_vectors()
    assert queries.dtype == vectors.dtype == np.float32, f"queries {queries.dtype}, vectors {vectors.dtype}"
    assert bias is None or bias.shape == (history.n_items,), f"item bias of shape {bias.shape}"
    product = queries.astype(np.float64) @ vectors.T.astype(np.float64) + (0.0 if bias is None else bias)
    assert_scores_equivalent(product, model.score(CONTRACT_USERS, history),
                             what="user_queries @ item_vectors.T + bias against score")


def check_same_seed_same_scores(case: ContractCase) -> None:
    # against the shared fit, made earlier in this process: a fit that depends on what ran before it
    # (a cache, a warmed kernel, a global generator) fails here, and one fit fewer is needed
    history = case.split.history("test")
    a = case.fitted.score(CONTRACT_USERS, history)
    b = case.fit(case.fresh()).score(CONTRACT_USERS, history)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg="two fits with one seed score differently")


def check_refit_replaces_state(case: ContractCase) -> None:
    other = clustered_dataset(clustered_interactions(n_users=60, n_items=40, per_user=10, seed=3))
    model = case.fresh(other).fit(other.interactions)
    assert model.score(np.array([0, 1]), other.interactions).shape == (2, 40)
    if isinstance(model, UsesDataset):
        model.use_dataset(case.dataset)
    case.fit(model)
    history = case.split.history("test")  # the shared fit is the fresh one
    np.testing.assert_allclose(model.score(CONTRACT_USERS, history), case.fitted.score(CONTRACT_USERS, history),
                               rtol=1e-6, atol=1e-7, err_msg="a refitted model scores unlike a fresh fit")


def check_save_load_round_trip_without_pickle(case: ContractCase) -> None:
    from recstack.models.protocol import load_model

    model = case.fitted
    folder = case.folder / f"saved-{type(model).__name__}"
    model.save(folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files, "save wrote no files"
    pickled = [p.name for p in files if p.suffix in {".pkl", ".pickle", ".pt", ".joblib"}]
    assert not pickled, f"save wrote pickle-based files {pickled}"
    for path in files:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:  # raises if anything needs pickle
                for key in npz.files:
                    assert npz[key].dtype != object, f"{path.name}[{key!r}] holds Python objects"
    loaded = load_model(folder, trust=True)  # the test's own class: trusted
    assert type(loaded) is type(model) and loaded.config == model.config, "load gave another class or config"
    for attribute, value in vars(model).items():  # the fitted arrays come back bit for bit ...
        if attribute.endswith("_") and isinstance(value, np.ndarray) and attribute in vars(loaded):
            np.testing.assert_array_equal(vars(loaded)[attribute], value, err_msg=attribute)
    history = case.split.history("test")
    # ... and score alike (one GEMM may still round with the arrays' memory alignment)
    assert_scores_equivalent(loaded.score(CONTRACT_USERS, history), model.score(CONTRACT_USERS, history),
                             what="scores of the loaded model")


def check_user_with_empty_history_scores_without_error(case: ContractCase) -> None:
    history = case.split.train
    history = history.take(history.user != 5)
    scores = case.fitted.score(np.array([5, 0], dtype=np.int32), history)
    assert scores.shape == (2, history.n_items)
    assert not np.isnan(scores).any() and not np.isposinf(scores).any(), "a user without history scored NaN/+inf"


def check_says_which_users_it_can_score(case: ContractCase) -> None:
    """`can_score` (the `UserCoverage` ability): True for trained users with a history; a user whose
    row would be constant (nothing learned to rank by) must be answered False, so that the cold-user
    policy, not the model's accident, decides what that user gets; no error beyond the vocabulary."""
    model = case.fitted
    assert isinstance(model, UserCoverage), f"{type(model).__name__} has no can_score(users, history)"
    history = case.split.history("test")
    answer = np.asarray(model.can_score(CONTRACT_USERS, history))
    assert answer.dtype == bool and answer.shape == (len(CONTRACT_USERS),), \
        f"can_score must return one bool per user, got {answer.dtype} {answer.shape}"
    assert answer.all(), f"trained users with a history answered False: {CONTRACT_USERS[~answer].tolist()}"
    emptied = case.split.train.take(case.split.train.user != 5)
    says = bool(np.asarray(model.can_score(np.array([5], dtype=np.int32), emptied))[0])
    beyond = np.asarray(model.can_score(np.array([history.n_users + 3], dtype=np.int64), history))
    assert beyond.shape == (1,) and beyond.dtype == bool
    if says:
        row = model.score(np.array([5], dtype=np.int32), emptied)[0]
        finite = row[np.isfinite(row)]
        assert finite.size and np.ptp(finite) > 0, \
            "can_score answered True for a user whose scores are one constant (empty history): answer False"


def check_build_from_module_path(case: ContractCase) -> None:
    from recstack.models import build, resolve

    model = case.make()
    target = f"{type(model).__module__}:{type(model).__qualname__}"
    assert resolve(target) is type(model), f"{target!r} does not resolve to the class"
    assert build(target, model.config.model_dump()).config == model.config


def check_top_k_lists_unseen_items(case: ContractCase) -> None:
    """Only for models that make their own lists (`ListRecommender`): k distinct items per user,
    none from the history when it is masked, scores descending."""
    model = case.fitted
    if not isinstance(model, ListRecommender):
        return
    history = case.split.history("test")
    items, scores = model.top_k(CONTRACT_USERS, history, 10, mask_history=True)
    assert items.shape == scores.shape == (len(CONTRACT_USERS), 10)
    seen = history.matrix()[CONTRACT_USERS]
    for row, user_items in enumerate(items):
        listed = user_items[user_items >= 0]
        assert len(set(listed.tolist())) == len(listed), f"row {row} lists an item twice"
        assert not seen[row, listed].toarray().any(), f"row {row} lists an item of the history"
        finite = scores[row][user_items >= 0]
        assert (np.diff(finite) <= 1e-6).all(), f"row {row}'s scores do not descend"


def check_training_history_is_recorded(case: ContractCase) -> None:
    """Only for models that train by epochs: one entry per epoch and a restored epoch among them."""
    model = case.fitted
    if not isinstance(model, TrainedByEpochs):
        return
    assert model.history_, "history_ is empty"
    epochs = [entry["epoch"] for entry in model.history_]
    assert epochs == sorted(epochs) and model.best_epoch_ in range(1, max(epochs) + 1), \
        f"best_epoch_ {model.best_epoch_} is not one of the epochs {epochs[0]}..{epochs[-1]}"


def held_out_ndcg(model: Any, split: Split, k: int = 10) -> float:
    """Test NDCG@k of a fitted model on `split` (history of train + valid, masked): the figure the
    model tests pin on the clustered fixture."""
    from recstack.evaluate.evaluator import evaluate

    return evaluate(model, split.history("test"), split.test, metrics=[f"NDCG@{k}"])[f"NDCG@{k}"]


def built_module(name: str, params: dict[str, Any], dataset: Dataset, split: Split) -> tuple[Any, Any]:
    """(model, its torch module built but not trained) with the private state of a fit, for tests of
    a TorchRecommender's forward pass and loss by hand."""
    from recstack.models import build

    model = build(name, params).use_dataset(dataset)
    rng = model.start_fit(split.train)
    return model, model.build_module(split.train, rng)


def check_beats_random_on_clustered_data(case: ContractCase) -> None:
    from recstack.models import build

    model = case.fitted
    if type(model).__name__ == "Random":
        return
    random = build("random").fit(case.split.train)
    assert held_out_ndcg(model, case.split) > held_out_ndcg(random, case.split) + 0.02, \
        "NDCG@10 on clustered data is not above random's"


CONTRACT_CHECKS: dict[str, Callable[[ContractCase], None]] = {
    name.removeprefix("check_"): function for name, function in list(globals().items())
    if name.startswith("check_") and name != "check_recommender" and callable(function)}


def contract_case(target: Any, params: dict[str, Any] | None = None, *,
                  make: Callable[[], Any] | None = None, dataset: Dataset | None = None) -> ContractCase:
    """The case for a registered name, a class or `"package.module:Class"` with `params`; or `make`,
    a function building the configured model (e.g. with side data set by hand)."""
    if make is None:
        from recstack.models import resolve
        from recstack.models.protocol import make_config

        cls = resolve(target) if isinstance(target, str) else target
        make = lambda: cls(make_config(cls.Config, dict(params or {})))  # noqa: E731
    return ContractCase(make, dataset if dataset is not None else clustered_dataset())


def check_recommender(target: Any, params: dict[str, Any] | None = None, *, make: Callable[[], Any] | None = None,
                      dataset: Dataset | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """Run every contract check on one model; raise AssertionError naming the first check that fails.
    Returns the names of the checks run. `skip` leaves named checks out (say why in your test)."""
    case = contract_case(target, params, make=make, dataset=dataset)
    ran = []
    for name, check in CONTRACT_CHECKS.items():
        if name in skip:
            continue
        try:
            check(case)
        except AssertionError as exc:
            raise AssertionError(f"contract check {name!r} failed for {type(case.make()).__name__}: {exc}") from exc
        ran.append(name)
    return ran
