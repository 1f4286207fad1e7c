"""Shared fixtures: a small clustered implicit-feedback log that models can actually learn."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from recstack.data import Interactions, Vocab
from recstack.split import Split
from recstack.testing import clustered_interactions, shuffled_split


# torch.compile's kernel cache is not keyed by the forced kernel level: a kernel compiled under
# ATEN_CPU_CAPABILITY=avx2 aborts the process when a native run loads it, and the other way round.
# One cache per level, so `dev.py test --cpu ...` and a plain run never share compiled kernels.
_KERNEL_LEVEL = "-".join(os.environ.get(v, "native") for v in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"))
_OWNER = os.getuid() if hasattr(os, "getuid") else "user"  # getpass.getuser() fails for a uid without a name
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"torchinductor_{_OWNER}_{_KERNEL_LEVEL}"))


# files that take longest (a slow test, a Ray cluster, a real LLM) go first: pytest-xdist hands out
# whole files in collection order, and a long file picked up last keeps one worker busy alone at the end
_LONG_FIRST = ("tests/cluster/", "tests/llm/", "tests/contract/")


def pytest_collection_modifyitems(config, items) -> None:
    slow_files = {item.path for item in items
                  if item.get_closest_marker("slow") or any(part in item.path.as_posix() for part in _LONG_FIRST)}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its own order


def pytest_terminal_summary(terminalreporter) -> None:
    """Which kernels this run used, so a log shows the CPU kind it tested (see dev.py --cpu); a
    summary line, unlike the header, is printed under -q too."""
    terminalreporter.write_line("kernels: " + "; ".join(_kernel_lines()))


def _kernel_lines() -> list[str]:
    lines = []
    try:
        import torch

        lines.append(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info() if i["user_api"] == "blas"]
        lines.append(f"numpy BLAS: {', '.join(blas) or 'none loaded'}")
    except ImportError:
        pass
    return lines


# the contract's synthetic data, shipped in `recstack.testing` so a user's own tests use it too
make_clustered = clustered_interactions
simple_split = shuffled_split


# cut points of `late_joiners`' global temporal split: train t <= 10 < valid t <= 20 < test
LATE_JOINER_CUTOFFS = (10, 20)


def late_joiners() -> Interactions:
    """14 users, 12 items, timestamps made for a global time cut at `LATE_JOINER_CUTOFFS`, so that
    some evaluated users have no history. Per group (user indices), events before / in / after the window:

    - 0-5: eight train events, one valid, one test (warm everywhere);
    - 6-8: join in the valid window: two valid events (no history for valid) and one test event
      (a history of two for test);
    - 9-11: join in the test window: two test events, no history for test;
    - 12-13: two train events, one valid, one test (histories of two and three).

    Valid: 11 users with held-out events, 3 without history, 5 with fewer than 5 events.
    Test: 14 users, 3 without history, 8 with fewer than 5 events.
    """
    rows = []
    for u in range(6):
        rows += [(u, (u + j) % 12, 1 + j) for j in range(8)] + [(u, (u + 8) % 12, 15), (u, (u + 9) % 12, 25)]
    for u in range(6, 9):
        rows += [(u, u % 12, 12), (u, (u + 1) % 12, 13), (u, (u + 2) % 12, 22)]
    for u in range(9, 12):
        rows += [(u, u % 12, 21), (u, (u + 1) % 12, 23)]
    for u in range(12, 14):
        rows += [(u, u % 12, 2), (u, (u + 1) % 12, 3), (u, (u + 2) % 12, 16), (u, (u + 3) % 12, 26)]
    user, item, timestamp = (np.array(column) for column in zip(*rows))
    return Interactions(user, item, Vocab(np.arange(14), "user"), Vocab(np.arange(12), "item"),
                        timestamp=timestamp)


def write_log(log: Interactions, path: Path) -> Path:
    """`log` as a CSV with columns user,item,rating,timestamp (ids 'u3', 'i7')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user,item,rating,timestamp\n" + "".join(
        f"u{u},i{i},1,{t}\n" for u, i, t in zip(log.users.ids[log.user], log.items.ids[log.item], log.timestamp)))
    return path


@pytest.fixture(scope="session")
def clustered() -> Interactions:
    return make_clustered()


@pytest.fixture(scope="session")
def clustered_with_items():
    """The clustered fixture as a Dataset with its item table (titles, genres, years) and a shuffled
    split of it: what the multimodal models read (`use_dataset`) and are pinned on."""
    from recstack.testing import clustered_dataset, shuffled_split

    dataset = clustered_dataset()
    return dataset, shuffled_split(dataset.interactions)


# the item-modality models' unit tests (MMHCL, LIRDRec): both offline modalities, a small TF-IDF, a
# short fit; each file pins its model's NDCG@10 with these
MODALITY_FAST = {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 10,
                 "learning_rate": 1e-2, "batch_size": 512, "embedding_size": 32, "verbose": False}


def built_with_items(name: str, data, **params):
    """(model, module, split): `name` with `MODALITY_FAST` plus `params`, built on `clustered_with_items`."""
    from recstack.testing import built_module

    dataset, split = data
    return (*built_module(name, {**MODALITY_FAST, **params}, dataset, split), split)


def genre_kg_planted():
    """(Dataset, split) of the KG models' unit tests (KGAT, DiffKG): 150 users, 600 items in 6 clusters,
    10 events a user (95% in their cluster), and a genres column naming each item's cluster, which
    `item_kg_columns: ["genres"]` turns into the knowledge graph."""
    from recstack.data.dataset import Dataset
    from recstack.testing import clustered_item_table

    data = clustered_interactions(n_users=150, n_items=600, n_clusters=6, per_user=10, in_cluster=0.95, seed=1)
    return Dataset(data, item_table=clustered_item_table(data.items.ids, n_clusters=6)), shuffled_split(data)


@pytest.fixture(scope="session")
def clustered_split(clustered) -> Split:
    return simple_split(clustered)


def user_module(folder: Path, monkeypatch, body: str = "") -> tuple[str, Path]:
    """A module on sys.path whose import writes a flag file: the proof that its code ran."""
    name = f"recstack_user_code_{uuid.uuid4().hex[:8]}"
    flag = folder / f"{name}.imported"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(flag)!r}).write_text('ran')\n{body}")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name, flag


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (from the package index, never the web), loaded once for every
    test that needs it: de-quantising its weights is the slow part."""
    from recstack.llm import LocalLM

    model = LocalLM("smollm2", max_batch=2)  # a batch of 2: the chunked paths run too
    model.count_tokens("load")
    return model


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    the pinned figures were measured so, and float sums are only reproducible at a fixed thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
