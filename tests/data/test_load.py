"""Loaders: generic tables, the raw MovieLens formats and RecBole atomic files.

Expected values come from reading the hand-written fixtures under tests/fixtures/.
"""

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recstack.data import Dataset
from recstack.data.load import load_atomic, load_movielens, load_table, read_table
from recstack.errors import RecstackError

FIXTURES = Path(__file__).parents[1] / "fixtures"  # hand-written, a few lines each


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- read_table / load_table --------------------------------------------------------------------
def test_read_table_csv_defaults_keep_string_ids_as_strings():
    raw = read_table(FIXTURES / "interactions.csv")
    assert set(raw) == {"user", "item", "value", "timestamp"}
    assert raw["user"].tolist() == ["alice", "alice", "bob", "carol"]
    # "007" is not a canonical integer: every item id stays a string, none is turned into 7
    assert raw["item"].dtype == object and raw["item"].tolist() == ["007", "42", "007", "13"]
    assert raw["value"].tolist() == [5.0, 3.0, 4.0, 2.0]
    assert raw["timestamp"].dtype == np.int64 and raw["timestamp"].tolist() == [1000, 1001, 999, 1002]


def test_read_table_integer_ids_stay_integers_and_optional_columns_are_omitted(tmp_path):
    raw = read_table(write(tmp_path / "log.csv", "user_id,item_id\n3,10\n1,11\n"))
    assert set(raw) == {"user", "item"}
    assert raw["user"].dtype.kind == "i" and raw["user"].tolist() == [3, 1]
    assert raw["item"].tolist() == [10, 11]


@pytest.mark.parametrize("name, text", [
    ("log.tsv", "user_id\titem_id\trating\n1\t2\t4.5\n"),
    ("log.txt", "user_id|item_id|rating\n1|2|4.5\n"),
    ("log.txt", "user_id;item_id;rating\n1;2;4.5\n"),
    ("log.dat", "user_id::item_id::rating\n1::2::4.5\n"),
    ("log.txt", "user_id item_id rating\n1 2 4.5\n"),
])
def test_separator_is_sniffed(tmp_path, name, text):
    raw = read_table(write(tmp_path / name, text))
    assert raw["user"].tolist() == [1] and raw["item"].tolist() == [2] and raw["value"].tolist() == [4.5]


def test_explicit_column_mapping_and_movielens_spellings(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,stars,when\n1,5,3.5,100\n2,6,4,200\n")
    raw = read_table(path, columns={"value": "stars", "timestamp": "when"})
    assert raw["user"].tolist() == [1, 2] and raw["item"].tolist() == [5, 6]
    assert raw["value"].tolist() == [3.5, 4.0] and raw["timestamp"].tolist() == [100, 200]
    assert "value" not in read_table(path)  # no "rating" column and none named: omitted


def test_missing_named_column_is_an_error_listing_those_present(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\n1,2\n")
    with pytest.raises(RecstackError, match=r"no column 'rating'.*\['user_id', 'item_id'\]"):
        read_table(path, columns={"value": "rating"})
    with pytest.raises(RecstackError, match="no user column.*columns present: \\['a', 'b'\\]"):
        read_table(write(tmp_path / "other.csv", "a,b\n1,2\n"))
    with pytest.raises(RecstackError, match="unknown column role"):
        read_table(path, columns={"rating": "x"})


def test_wrong_field_count_names_path_and_line(tmp_path):
    path = write(tmp_path / "bad.csv", "user_id,item_id,rating\n1,2,3\n1,3,4\n2,3\n4,5,6\n")
    with pytest.raises(RecstackError, match=r"bad\.csv, line 4: expected 3 fields, found 2"):
        read_table(path)


def test_non_numeric_rating_names_path_and_line(tmp_path):
    path = write(tmp_path / "bad.csv", "user_id,item_id,rating\n1,2,3\n1,3,4\n2,3,five\n")
    with pytest.raises(RecstackError, match=r"bad\.csv, line 4, column 'rating': 'five' is not a number; correct"):
        read_table(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(RecstackError, match="no such file"):
        read_table(tmp_path / "nope.csv")


def test_parquet_and_data_frames(tmp_path):
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": [7, 8], "rating": [1.0, 2.0],
                          "timestamp": pd.to_datetime(["1970-01-01 00:01:40", "1970-01-01 00:03:20"])})
    expected = {"user": ["a", "b"], "item": [7, 8], "value": [1.0, 2.0], "timestamp": [100, 200]}
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet")
    for source in (frame, pl.from_pandas(frame), tmp_path / "log.parquet"):
        raw = read_table(source)
        assert {role: column.tolist() for role, column in raw.items()} == expected
    with pytest.raises(RecstackError, match=r"row 1 \(0-based\), column 'rating': value 'x' is not a number"):
        read_table(pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "rating": ["1", "x"]}))


def test_load_table_builds_a_dataset_with_provenance():
    data = load_table(FIXTURES / "interactions.csv", name="toy")
    assert isinstance(data, Dataset)
    assert data.provenance["name"] == "toy" and data.provenance["format"] == "csv"
    assert data.provenance["source"].endswith("interactions.csv")
    log = data.interactions
    assert log.users.ids.tolist() == ["alice", "bob", "carol"]  # first appearance
    assert log.items.ids.tolist() == ["007", "42", "13"]
    assert len(log) == 4 and log.value is not None and log.timestamp is not None


# ---- MovieLens --------------------------------------------------------------------------------
def test_ml100k_raw_format():
    data = load_movielens(FIXTURES / "ml-100k-mini")
    log = data.interactions
    assert data.provenance["format"] == "movielens-100k" and data.provenance["name"] == "ml-100k-mini"
    assert log.users.ids.tolist() == [1, 2, 3]
    assert log.items.ids.tolist() == [10, 20, 30, 40]  # 50 is in u.item but never rated
    assert len(log) == 5 and sorted(log.value.tolist()) == [1, 2, 3, 4, 5]
    items = data.item_table
    # 20 is latin-1 encoded; 30 has no year anywhere; 40 is rated but absent from u.item
    assert items["title"].tolist() == ["Toy Story", "Misérables, Les", "unknown", ""]
    assert items["year"].tolist() == [1995, 1995, -1, -1]
    assert items["genres"].tolist() == ["Animation|Children's|Comedy", "Drama|Musical", "unknown", ""]
    users = data.user_table
    assert users["age"].tolist() == [24, 53, 23]  # user 4 never rated: dropped
    assert users["gender"].tolist() == ["M", "F", "M"]
    assert users["occupation"].tolist() == ["technician", "other", "writer"]
    assert users["zip_code"].tolist() == ["85711", "94043", "02138"]


def test_ml1m_raw_format():
    data = load_movielens(FIXTURES / "ml-1m-mini")
    log = data.interactions
    assert data.provenance["format"] == "movielens-1m"
    assert log.users.ids.tolist() == [1, 2] and log.items.ids.tolist() == [1193, 661, 3408, 2000]
    assert data.item_table["title"].tolist() == [
        "One Flew Over the Cuckoo's Nest", "James and the Giant Peach", "Erin Brockovich", "Café au lait (Métisse)"]
    assert data.item_table["year"].tolist() == [1975, 1996, 2000, 1993]
    assert data.item_table["genres"][1] == "Animation|Children's|Musical"
    assert data.user_table["occupation"].tolist() == ["K-12 student", "self-employed"]  # codes 10 and 16
    assert data.user_table["age"].tolist() == [1, 56]


def test_ml_latest_raw_format_in_an_unzipped_parent_folder(tmp_path):
    shutil.copytree(FIXTURES / "ml-latest-mini", tmp_path / "ml-latest-small")
    data = load_movielens(tmp_path)  # the folder that holds the unzipped archive
    assert data.provenance["name"] == "ml-latest-small" and data.provenance["format"] == "movielens-latest"
    log = data.interactions
    assert log.items.ids.tolist() == [1, 3, 193609]
    assert log.value.tolist() == [4.5, 4.0, 2.5, 0.5]  # user 1 rated movie 3 before movie 1
    assert data.item_table["title"].tolist() == ["Toy Story", "American President, The", "Andrew Dice Clay: Dice Rules"]
    assert data.item_table["genres"].tolist() == ["Adventure|Animation|Children|Comedy|Fantasy",
                                                  "Comedy|Drama|Romance", ""]
    assert data.user_table == {}


def test_load_movielens_on_a_folder_without_movielens_files(tmp_path):
    with pytest.raises(RecstackError, match="holds no MovieLens files"):
        load_movielens(tmp_path)


# ---- RecBole atomic ---------------------------------------------------------------------------
def test_atomic_files_with_side_tables_and_knowledge_graph():
    data = load_atomic(FIXTURES / "atomic-mini")
    log = data.interactions
    assert data.provenance == {"name": "mini", "format": "atomic", "source": str(FIXTURES / "atomic-mini")}
    assert log.users.ids.tolist() == ["u1", "u2"] and log.items.ids.tolist() == [1, 2, 3]
    assert log.timestamp.dtype == np.int64 and sorted(log.timestamp.tolist()) == [100, 150, 200, 300]
    # renamed as in load_movielens; item 3 has no .item row, item 4 is never rated
    assert data.item_table["title"].tolist() == ["Toy Story", "Heat", ""]
    assert data.item_table["year"].tolist() == [1995, 1995, -1]
    assert data.item_table["genres"].tolist() == ["Animation|Children's|Comedy", "Action|Crime|Thriller", ""]
    assert data.user_table["age"].tolist() == [24, 53]
    assert data.user_table["zip_code"].tolist() == ["00501", "94043"]  # tokens keep leading zeros
    kg = data.kg
    entities = kg.entities.tolist()
    triples = {(entities[h], kg.relations[r], entities[t]) for h, r, t in zip(kg.head, kg.relation, kg.tail)}
    assert triples == {("m.toy", "film.genre", "m.animation"), ("m.heat", "film.director", "m.mann"),
                       ("m.toy", "film.director", "m.lasseter")}
    assert [entities[e] if e >= 0 else None for e in kg.item_entity] == ["m.toy", "m.heat", None]


def test_atomic_without_an_inter_file(tmp_path):
    with pytest.raises(RecstackError, match="one <name>.inter"):
        load_atomic(tmp_path)


def test_atomic_rejects_unknown_field_type(tmp_path):
    write(tmp_path / "x.inter", "user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(RecstackError, match="unknown type 'int'"):
        load_atomic(tmp_path)


# ---- data that is wrong is refused: one line naming file, line or row, column and the fix ---------
HEADER = "user_id,item_id,rating,timestamp\n"


@pytest.mark.parametrize("row, message", [
    (",8,4,100", "line 3, column 'user_id': empty user id; give every row a user id or drop the row"),
    ('"",8,4,100', "line 3, column 'user_id': empty user id; give every row a user id"),
    ("  ,8,4,100", "line 3, column 'user_id': blank user id '  '; give every row a user id"),
    ("2,,4,100", "line 3, column 'item_id': empty item id; give every row an item id"),
    ("NaN,8,4,100", "line 3, column 'user_id': user id 'NaN' marks a missing value among integer ids; "
                    "give the row a real user id or drop the row"),
    ("2,NA,4,100", "line 3, column 'item_id': item id 'NA' marks a missing value among integer ids"),
    ("2,8,inf,100", "line 3, column 'rating': value inf is not finite; values (ratings) must be finite numbers"),
    ("2,8,-inf,100", "line 3, column 'rating': value -inf is not finite"),
    ("2,8,,100", "line 3, column 'rating': empty value; give every row a value or drop the row"),
    ("2,8,4,inf", "line 3, column 'timestamp': timestamp inf is not finite; timestamps must be finite seconds"),
    ("2,8,4,-inf", "line 3, column 'timestamp': timestamp -inf is not finite"),
    ("2,8,4,1e300", "line 3, column 'timestamp': timestamp 1e+300 is out of range"),
    ("2,8,4,", "line 3, column 'timestamp': empty timestamp"),
])
def test_bad_cells_in_a_csv_are_refused_with_line_column_and_fix(tmp_path, row, message):
    path = write(tmp_path / "log.csv", HEADER + "1,7,5,99\n" + row + "\n3,9,1,101\n")
    with pytest.raises(RecstackError) as info:
        load_table(path)
    assert str(info.value).startswith(f"{path}, ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_value_markers_among_text_ids_stay_ids(tmp_path):
    # "NA" is a real id (a country code) where the ids are text anyway; only among integer
    # ids is it a missing-value marker
    raw = read_table(write(tmp_path / "log.csv", "user_id,item_id\nNA,7\nDE,8\nnan,9\n"))
    assert raw["user"].tolist() == ["NA", "DE", "nan"]


def test_the_first_bad_line_is_named(tmp_path):
    path = write(tmp_path / "log.tsv", "user_id\titem_id\trating\n1\t2\t3\n1\t3\tinf\n1\t4\t-inf\n")
    with pytest.raises(RecstackError, match=r"log\.tsv, line 3, column 'rating': value inf"):
        read_table(path)


def test_frames_refuse_missing_blank_and_non_finite_cells(tmp_path):
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    cases = [
        ({"user_id": ["a", None], "item_id": [1, 2]}, "row 1 (0-based), column 'user_id': empty user id"),
        ({"user_id": [1.0, np.nan], "item_id": [1, 2]}, "row 1 (0-based), column 'user_id': empty user id"),
        ({"user_id": ["a", " "], "item_id": [1, 2]}, "row 1 (0-based), column 'user_id': blank user id ' '"),
        ({"user_id": [1, "a", None], "item_id": [1, 2, 3]}, "row 2 (0-based), column 'user_id': empty user id"),
        ({"user_id": [1, 2], "item_id": [1, 2], "rating": [1.0, np.inf]},
         "row 1 (0-based), column 'rating': value inf is not finite"),
        ({"user_id": [1, 2], "item_id": [1, 2], "rating": [1, "x"]},
         "row 1 (0-based), column 'rating': value 'x' is not a number"),
        ({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, -np.inf]},
         "row 1 (0-based), column 'timestamp': timestamp -inf is not finite"),
    ]
    for columns, message in cases:
        frame = pd.DataFrame(columns)
        with pytest.raises(RecstackError, match=re.escape(f"the data frame, {message}")):
            read_table(frame)
        if frame.dtypes.map(lambda d: d != object).all():  # polars takes no mixed object columns
            with pytest.raises(RecstackError, match=re.escape(message)):
                read_table(pl.from_pandas(frame))
    # arrow tables keep NaN as a value, not a null: still refused
    with pytest.raises(RecstackError, match=r"row 0 \(0-based\), column 'user_id': user id nan is not finite"):
        read_table(pa.table({"user_id": [np.nan, 1.0], "item_id": [1, 2]}))
    with pytest.raises(RecstackError, match=r"row 1 \(0-based\), column 'rating': value nan is not finite"):
        read_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "rating": [1.0, np.nan]}))


def test_frame_ids_beyond_int64_become_text_ids():
    pd = pytest.importorskip("pandas")
    raw = read_table(pd.DataFrame({"user_id": [2 ** 70, 5], "item_id": [1, 2]}))
    assert raw["user"].tolist() == [str(2 ** 70), "5"]


def test_parquet_refuses_empty_ids_and_infinite_values(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["a", ""], "item_id": [1, 2]}), path)
    with pytest.raises(RecstackError, match=r"log\.parquet, row 1 \(0-based\), column 'user_id': empty user id"):
        read_table(path)
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, float("inf")]}), path)
    with pytest.raises(RecstackError, match=r"row 1 \(0-based\), column 'timestamp': timestamp inf is not finite"):
        read_table(path)


@pytest.mark.parametrize("row, message", [
    ("\t2\t3\t4", "line 3, column 'user_id:token': empty user id"),
    ("1\t \t3\t4", "line 3, column 'item_id:token': blank item id ' '"),
    ("1\t2\tinf\t4", "line 3, column 'rating:float': value inf is not finite"),
    ("1\t2\t\t4", "line 3, column 'rating:float': empty value"),
    ("1\t2\t3\t-inf", "line 3, column 'timestamp:float': timestamp -inf is not finite"),
    ("1\t2\t3\t", "line 3, column 'timestamp:float': empty timestamp"),
])
def test_atomic_files_refuse_bad_cells(tmp_path, row, message):
    write(tmp_path / "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t1\n"
          + row + "\n")
    with pytest.raises(RecstackError, match=re.escape(f"{tmp_path / 'x.inter'}, {message}")):
        load_atomic(tmp_path)


@pytest.mark.parametrize("fixture, ratings, row, message", [
    ("ml-100k-mini", "u.data", "\t3\t4\t5", "line {n}, column 'user': empty user id"),
    ("ml-100k-mini", "u.data", "1\t3\tinf\t5", "line {n}, column 'value': value inf is not finite"),
    ("ml-1m-mini", "ratings.dat", "1::::4::5", "line {n}, column 'item': empty item id"),
    ("ml-latest-mini", "ratings.csv", "1,3,-inf,5", "line {n}, column 'rating': value -inf is not finite"),
])
def test_movielens_files_refuse_bad_cells(tmp_path, fixture, ratings, row, message):
    folder = shutil.copytree(FIXTURES / fixture, tmp_path / fixture)
    path = folder / ratings
    text = path.read_text(encoding="latin-1").rstrip("\n") + "\n" + row + "\n"
    path.write_text(text, encoding="latin-1")
    n = text.count("\n")
    with pytest.raises(RecstackError, match=re.escape(f"{path}, {message.format(n=n)}")):
        load_movielens(folder)


def test_a_folder_of_parquet_parts_reads_as_one_table(tmp_path):
    """Plain parts and Hive-partitioned ones (as Spark, Ray Data, DuckDB write them); rows in part order."""
    folder = tmp_path / "log"
    (folder / "day=1").mkdir(parents=True)
    (folder / "day=2").mkdir()
    pq.write_table(pa.table({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "rating": [5.0, 3.0, 4.0]}),
                   folder / "day=1" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": [3, 2], "item_id": [12, 12], "rating": [1.0, 2.0]}),
                   folder / "day=2" / "part-0.parquet")
    (folder / ".tmp").mkdir()  # a writer's hidden scratch is not data
    pq.write_table(pa.table({"user_id": [9], "item_id": [9], "rating": [9.0]}), folder / ".tmp" / "x.parquet")
    raw = read_table(folder)
    assert raw["user"].tolist() == [1, 1, 2, 3, 2] and raw["item"].tolist() == [10, 11, 10, 12, 12]
    assert raw["value"].tolist() == [5.0, 3.0, 4.0, 1.0, 2.0]
    data = load_table(folder).interactions
    assert (len(data), data.n_users, data.n_items) == (5, 3, 3)


def test_a_parquet_folder_loads_as_the_same_file_would_with_ids_held_in_32_bits(tmp_path):
    # 64-bit ids are read in 32 bits where they fit; a part whose ids do not fit (item 2**40 here) and
    # a part of text ids must still give the vocabularies and codes one file gives, types included
    folder, whole = tmp_path / "log", tmp_path / "whole.parquet"
    folder.mkdir()
    parts = [{"user_id": [7, 7, 3], "item_id": [10, 11, 10], "timestamp": [1, 2, 1]},
             {"user_id": [3, 9], "item_id": [2**40, 11], "timestamp": [5, 1]}]
    for i, part in enumerate(parts):
        pq.write_table(pa.table(part), folder / f"part-{i}.parquet")
    pq.write_table(pa.table({key: parts[0][key] + parts[1][key] for key in parts[0]}), whole)
    by_folder, by_file = load_table(folder).interactions, load_table(whole).interactions
    for a, b in ((by_folder.users, by_file.users), (by_folder.items, by_file.items)):
        assert a.ids.dtype == b.ids.dtype == np.int64 and a.ids.tolist() == b.ids.tolist()
    assert by_folder.fingerprint() == by_file.fingerprint()
    assert by_folder.items.ids.tolist() == [10, 11, 2**40]
    text = tmp_path / "text"
    text.mkdir()
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [5, 6]}), text / "part-0.parquet")
    pq.write_table(pa.table({"user_id": ["u3"], "item_id": [5]}), text / "part-1.parquet")
    mixed = load_table(text).interactions  # int ids in one part, text in another: all text, as in one file
    assert mixed.users.ids.tolist() == ["1", "2", "u3"] and mixed.items.ids.tolist() == [5, 6]


def test_a_parquet_folder_names_the_part_and_row_of_a_bad_cell(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": [1, 2]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"user_id": ["c", ""], "item_id": [1, 2]}), folder / "part-1.parquet")
    with pytest.raises(RecstackError, match=r"part-1\.parquet, row 1 \(0-based\), column 'user_id': empty user id"):
        read_table(folder)
    with pytest.raises(RecstackError, match="folder without .parquet files"):
        (tmp_path / "empty").mkdir()
        read_table(tmp_path / "empty")
