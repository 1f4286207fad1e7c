"""A small synthetic CTR dataset with user and item side tables and a planted feature interaction.

Users carry `group` (a/b) and a noise `age`; items carry `kind` (x/y) and noise `genres`. A rating
is 5 (positive) when group and kind match (a-x, b-y) and 1 otherwise, with 10% of labels flipped:
neither field alone says anything about the label (each value is 50% positive), only their pair
does, so a model beats AUC 0.5 only by learning the interaction. Best reachable AUC is about 0.9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.data import Interactions, Vocab
from recstack.data.dataset import Dataset


def planted_dataset(n_users: int = 120, n_items: int = 80, n_rows: int = 6000, seed: int = 0,
                    flip: float = 0.1) -> Dataset:
    rng = np.random.default_rng(seed)
    group = rng.choice(np.array(["a", "b"], dtype=object), n_users)
    kind = rng.choice(np.array(["x", "y"], dtype=object), n_items)
    age = rng.integers(18, 70, n_users)
    genres = np.array(["|".join(sorted(set(rng.choice(["g1", "g2", "g3", "g4"], rng.integers(1, 4)))))
                       for _ in range(n_items)], dtype=object)
    keys = rng.choice(n_users * n_items, size=n_rows, replace=False)
    users, items = keys // n_items, keys % n_items
    match = (group[users] == "a") == (kind[items] == "x")
    match ^= rng.random(n_rows) < flip
    value = np.where(match, 5.0, 1.0).astype(np.float32)
    inter = Interactions(users, items, Vocab(np.arange(n_users), name="user"), Vocab(np.arange(n_items), name="item"),
                         value=value, timestamp=np.arange(n_rows))
    return Dataset(inter, item_table={"kind": kind, "genres": genres},
                   user_table={"group": group, "age": age}, provenance={"name": "planted"})


def write_atomic(dataset: Dataset, folder: Path, name: str = "planted") -> Path:
    """The dataset as RecBole atomic files (.inter, .user, .item) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"u{u}\ti{i}\t{v:g}\t{t}" for u, i, v, t in zip(inter.user, inter.item, inter.value, inter.timestamp)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    users = ["user_id:token\tgroup:token\tage:float"]
    users += [f"u{u}\t{g}\t{a}" for u, (g, a) in enumerate(zip(dataset.user_table["group"], dataset.user_table["age"]))]
    (folder / f"{name}.user").write_text("\n".join(users) + "\n")
    items = ["item_id:token\tkind:token\tgenres:token"]
    items += [f"i{i}\t{k}\t{g}" for i, (k, g) in enumerate(zip(dataset.item_table["kind"], dataset.item_table["genres"]))]
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return folder


PLANTED_FEATURES = [
    {"name": "group"}, {"name": "kind"},
    {"name": "age", "kind": "numeric", "transform": "normalise"},
    {"name": "genres", "kind": "multi", "sep": "|"},
]


@pytest.fixture(scope="session")
def planted() -> Dataset:
    return planted_dataset()


@pytest.fixture(scope="session")
def planted_atomic(planted, tmp_path_factory) -> Path:
    """The planted dataset as atomic files (a folder a config's data.path can name)."""
    return write_atomic(planted, tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def planted_features() -> list[dict]:
    return [dict(f) for f in PLANTED_FEATURES]


def planted_specs(sequence: bool = False) -> list:
    """The `FieldSpec`s of every planted field; `sequence`: plus the users' latest 20 training items
    (`history`), the field a behaviour model (`reads_sequences`, DiffuMIN) reads."""
    from recstack.data.ctr import FieldSpec

    specs = [FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("group"), FieldSpec("kind"),
             FieldSpec("age", kind="numeric"), FieldSpec("genres", kind="multi")]
    return [*specs, FieldSpec("history", kind="sequence", max_len=20)] if sequence else specs


@pytest.fixture(scope="session")
def planted_split(planted):
    """The planted rows split 8:1:1 (seed 0) with every planted field: what the model tests fit on."""
    from recstack.data.ctr import make_ctr_split

    return make_ctr_split(planted, planted_specs(), seed=0)


@pytest.fixture(scope="session")
def planted_sequence_split(planted):
    """The same rows and split with the `history` sequence field as well: what behaviour models fit on."""
    from recstack.data.ctr import make_ctr_split

    return make_ctr_split(planted, planted_specs(sequence=True), seed=0)
