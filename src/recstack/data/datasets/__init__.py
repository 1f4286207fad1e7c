"""Named datasets: fetch once into a local cache (checksum-verified, atomic), then load.

    >>> from recstack.data.datasets import load_dataset
    >>> data = load_dataset("ml-100k")          # doctest: +SKIP

The cache lives in `data_home()`: the `cache_dir` argument, else $RECSTACK_DATA, else
~/.cache/recstack. Each dataset is one directory `<cache>/<name>/` holding the source files and a
`COMPLETE` manifest (JSON: source, checksum, time). A fetch extracts into a temporary directory
inside the cache, writes the manifest last and renames the directory into place, so a directory
without the manifest is an interrupted fetch: it is never loaded, it is removed and fetched again.

Sources are tried in order (see `DatasetSpec.sources`); every download is checked against a
SHA-256 pinned in the spec before anything is extracted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from recstack.data.dataset import Dataset
from recstack.data.datasets.movielens import ML100K_RECBOLE_WHEEL, MOVIELENS
from recstack.data.datasets.spec import DatasetSpec, Source, UrlArchive, WheelMembers
from recstack.errors import RecstackError
from recstack.registry import did_you_mean

MARKER = "COMPLETE"
CONNECT_TIMEOUT_S = 3.0  # fail fast where the host is unreachable; reads get longer once connected
READ_TIMEOUT_S = 60.0
PIP_TIMEOUT_S = 300.0


class FetchError(RecstackError):
    """No source of a named dataset could be fetched (or a download failed its checksum)."""


# name -> spec; a new dataset module adds its tuple of specs here (tests add entries with monkeypatch.setitem)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in MOVIELENS}


# ---- cache location --------------------------------------------------------------------------
def data_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """The dataset cache: `cache_dir`, else $RECSTACK_DATA, else ~/.cache/recstack."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RECSTACK_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "recstack"


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise RecstackError(f"unknown dataset {name!r}.{did_you_mean(name, DATASETS)} Known: "
                            f"{', '.join(sorted(DATASETS))}. For your own files use "
                            "recstack.data.load.load_table or load_movielens") from None


def _is_complete(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return {}


# ---- transfers (module functions so tests can replace them) -------------------------------------
def _resolve(host: str, port: int, timeout: float) -> None:
    """DNS lookup bounded by `timeout` (socket time-outs do not cover name resolution)."""
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise OSError(f"resolving {host} took longer than {timeout:g} s")
    if outcome[0] is not None:
        raise OSError(f"cannot resolve {host}: {outcome[0]}")


def _download(url: str, destination: Path, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Stream `url` to `destination`; fails within about `timeout` seconds when unreachable."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname:
        _resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)
    request = urllib.request.Request(url, headers={"User-Agent": "recstack"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
        if sock is not None:  # connected: allow slow reads without a hair-trigger time-out
            sock.settimeout(READ_TIMEOUT_S)
        with open(destination, "wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)


def _pip_download(requirement: str, destination: Path) -> Path:
    """`python -m pip download --no-deps <requirement>` into `destination`; returns the wheel path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", str(destination), requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise OSError(f"pip download {requirement} took longer than {PIP_TIMEOUT_S:g} s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise OSError(f"pip download {requirement} failed: {' / '.join(tail)}")
    wheels = sorted(destination.glob("*.whl"))
    if not wheels:
        raise OSError(f"pip download {requirement} produced no wheel")
    return wheels[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str, what: str) -> str:
    actual = sha256_of(path)
    if actual != expected:
        raise FetchError(f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; "
                         "the download was discarded")
    return actual


def _fetch_url(source: UrlArchive, staging: Path, scratch: Path) -> dict[str, Any]:
    archive = scratch / Path(urllib.parse.urlsplit(source.url).path).name
    _download(source.url, archive)
    if source.size is not None and archive.stat().st_size != source.size:
        raise FetchError(f"{source.url}: expected {source.size} bytes, got {archive.stat().st_size}; "
                         "the download was discarded")
    digest = _verify(archive, source.sha256, source.url)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # refuse paths that would escape the staging folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise FetchError(f"{source.url}: unsafe path {member!r} in the archive")
            bundle.extractall(staging)
    except zipfile.BadZipFile:
        raise FetchError(f"{source.url}: not a zip archive") from None
    return {"source": source.url, "sha256": digest}


def _fetch_wheel(source: WheelMembers, staging: Path, scratch: Path) -> dict[str, Any]:
    wheel = _pip_download(source.requirement, scratch)
    digest = _verify(wheel, source.sha256, wheel.name)
    with zipfile.ZipFile(wheel) as bundle:
        names = set(bundle.namelist())
        for file in source.files:
            member = source.prefix + file
            if member not in names:
                raise FetchError(f"{wheel.name} has no {member}")
            with bundle.open(member) as src, open(staging / file, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    record = {"source": f"pip:{source.requirement}", "wheel": wheel.name, "sha256": digest,
              "members": [source.prefix + file for file in source.files]}
    if source.notes:
        record["notes"] = source.notes
    return record


def _fetch_source(source: Source, staging: Path, scratch: Path) -> dict[str, Any]:
    if isinstance(source, UrlArchive):
        return _fetch_url(source, staging, scratch)
    return _fetch_wheel(source, staging, scratch)


def _remove_stale_work(home: Path, name: str, max_age_s: float = 86_400.0) -> None:
    """Temporary folders of fetches killed without clean-up (a day old, so none still running)."""
    now = time.time()
    for work in home.glob(f".{name}.*"):
        try:
            if work.is_dir() and now - work.stat().st_mtime > max_age_s:
                shutil.rmtree(work, ignore_errors=True)
        except OSError:
            pass


# ---- public API --------------------------------------------------------------------------------
def fetch(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Download `name` into the cache unless it is already complete; return its directory.

    Tries each source in order; an unreachable host fails within a few seconds. A directory
    without the COMPLETE manifest (an interrupted fetch) is removed and fetched again.
    """
    spec = _spec(name)
    home = data_home(cache_dir)
    target = home / name
    if _is_complete(target) and not force:
        return target
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)  # an interrupted fetch: never trust its files
    home.mkdir(parents=True, exist_ok=True)
    _remove_stale_work(home, name)
    failures = []
    for source in spec.sources:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=home))
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".download", dir=home))
        try:
            record = _fetch_source(source, staging, scratch)
            record.update(dataset=name, fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            # The manifest is written last: its presence means every file above is complete.
            (staging / MARKER).write_text(json.dumps(record, indent=2))
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(staging, target)
            except OSError:
                if not _is_complete(target):  # lost a race only if the winner finished
                    raise
            return target
        except (OSError, FetchError, zipfile.BadZipFile, http.client.HTTPException) as exc:
            failures.append(f"{source.describe()}: {exc}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
    hint = spec.manual_hint or "download it yourself and load the folder with recstack.data.load.load_movielens(PATH)"
    raise FetchError(f"could not fetch dataset {name!r}; every source failed:\n  - " + "\n  - ".join(failures)
                     + f"\n{hint}")


def load_dataset(name: str, cache_dir: str | os.PathLike | None = None, kg: str = "source") -> Dataset:
    """Fetch `name` if it is not cached, then load it (provenance records the source).

    `kg`: "source" keeps the knowledge graph the source ships (the recbole wheel has one for ml-100k,
    GroupLens none); "recbole" takes the recbole wheel's `.kg` / `.link` files whatever source the
    interactions came from (see `KG_SOURCES`); "none" drops it."""
    spec = _spec(name)
    if kg not in ("source", "recbole", "none"):
        raise RecstackError(f"kg={kg!r}: expected 'source' (what the source ships), 'recbole' (the recbole "
                            "wheel's .kg/.link files) or 'none'")
    directory = fetch(name, cache_dir)
    dataset = spec.loader(directory)
    manifest = _manifest(directory)
    provenance = {**dataset.provenance, "name": name, "source": str(directory),
                  "fetched_from": manifest.get("source"), "sha256": manifest.get("sha256")}
    graph = dataset.kg
    if kg == "none":
        graph = None
    elif kg == "recbole":
        from recstack.data.formats.atomic import _read_kg

        kg_dir = fetch_kg(name, cache_dir)
        graph = _read_kg(kg_dir / f"{name}.kg", kg_dir / f"{name}.link", dataset.interactions.items)
        provenance["kg_source"] = str(kg_dir)
    return Dataset(dataset.interactions, dataset.item_table, dataset.user_table, graph, provenance)


# name -> the wheel files of its knowledge graph, for load_dataset(name, kg="recbole")
KG_SOURCES: dict[str, WheelMembers] = {
    "ml-100k": WheelMembers(requirement=ML100K_RECBOLE_WHEEL.requirement, sha256=ML100K_RECBOLE_WHEEL.sha256,
                            prefix=ML100K_RECBOLE_WHEEL.prefix, files=("ml-100k.kg", "ml-100k.link")),
}


def fetch_kg(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding `<name>.kg` and `<name>.link` from the recbole wheel: the dataset's own
    cache when its source was that wheel, else `<cache>/<name>-kg/` (fetched once, checksum-verified)."""
    if name not in KG_SOURCES:
        raise RecstackError(f"no knowledge graph source for dataset {name!r}; datasets with one: "
                            f"{', '.join(sorted(KG_SOURCES))}. Load your own triples with "
                            "recstack.data.kg.read_kg_table")
    home = data_home(cache_dir)
    own = home / name
    if _is_complete(own) and all((own / file).is_file() for file in KG_SOURCES[name].files):
        return own
    target = home / f"{name}-kg"
    if _is_complete(target):
        return target
    if target.exists():
        shutil.rmtree(target)
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-kg.", suffix=".partial", dir=home))
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-kg.", suffix=".download", dir=home))
    try:
        try:
            record = _fetch_wheel(KG_SOURCES[name], staging, scratch)
        except (OSError, zipfile.BadZipFile) as exc:
            raise FetchError(f"could not fetch the knowledge graph of {name!r} "
                             f"({KG_SOURCES[name].describe()}): {exc}") from None
        record.update(dataset=f"{name}-kg", fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (staging / MARKER).write_text(json.dumps(record, indent=2))
        try:
            os.replace(staging, target)
        except OSError:
            if not _is_complete(target):
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def list_datasets() -> list[dict[str, Any]]:
    """Name, description, size and sources of every named dataset."""
    return [{"name": spec.name, "description": spec.description, "size": spec.size,
             "sources": [source.describe() for source in spec.sources]} for spec in DATASETS.values()]


def dataset_info(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The spec, whether it is cached (and where), plus, when it is: the manifest, `summarize`
    statistics, how the ids were read (where the loader says), and the item / user side tables
    (their columns and one example row: the most rated item, the most active user)."""
    from recstack.data.prep import summarize

    _spec(name)  # an unknown name fails here, with a suggestion
    directory = data_home(cache_dir) / name
    info = next(entry for entry in list_datasets() if entry["name"] == name)
    info.update(cached=_is_complete(directory), path=str(directory))
    if info["cached"]:
        info["manifest"] = _manifest(directory)
        data = load_dataset(name, cache_dir)
        info["stats"] = summarize(data)
        if data.kg is not None:  # relations, triples per relation, linked share of items
            from recstack.data.kg import kg_stats

            info["kg"] = kg_stats(data.kg, data.interactions.n_items)
        ids = {key: data.provenance[key] for key in ("user_ids", "item_ids") if key in data.provenance}
        if ids:
            info["ids"] = ids
        log = data.interactions
        for label, table, vocab, counts in (("item_table", data.item_table, log.items, log.item_counts),
                                            ("user_table", data.user_table, log.users, log.user_counts)):
            if table:
                info[label] = _side_table_info(table, vocab.ids, counts())
    return info


def _side_table_info(table: dict[str, Any], ids: Any, counts: Any) -> dict[str, Any]:
    """Columns of a side table, and the row of the id with the most events as an example."""
    if not len(counts):
        return {"columns": list(table)}
    row = int(counts.argmax())
    cells = [f"{column}={values[row]}" for column, values in table.items() if len(values) > row]
    return {"columns": list(table), "example": "; ".join([f"id={ids[row]}", *cells])}


__all__ = ["DATASETS", "KG_SOURCES", "DatasetSpec", "FetchError", "UrlArchive", "WheelMembers", "data_home",
           "dataset_info", "fetch", "fetch_kg", "list_datasets", "load_dataset"]
