"""Property tests of the loaders over generated tables, clean and with bad cells.

Tables mix integer ids (small, up to the int64 limits and beyond them), unicode ids, numeric-looking
text ("007", "+7"), blanks, missing-value markers, non-finite and out-of-range numbers and
duplicate rows. Every outcome must be one of two: an `Interactions` holding exactly the table's
content (counts, id mapping, values, timestamps), or exactly one `RecstackError` whose single
line names the file (or frame), a line (or row) and a column where the oracle below finds a bad
cell. The oracle is written from the documented rules, not from the loader's code.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recstack.data.load import load_table, read_table
from recstack.errors import RecstackError

# documented in recstack.data.load: cells that mean "missing" where the other ids are integers
MARKERS = ("nan", "NaN", "NAN", "-nan", "NA", "N/A", "n/a", "#N/A", "<NA>", "NULL", "null", "None", "NaT")
INT64 = 2 ** 63
# a fixed draw, so the suite passes or fails the same way on every machine; RECSTACK_FUZZ=N draws N fresh ones
FRESH_EXAMPLES = int(os.environ.get("RECSTACK_FUZZ", "0"))
SETTINGS = settings(max_examples=FRESH_EXAMPLES or 60, derandomize=not FRESH_EXAMPLES, database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

# ---- generated cells ----------------------------------------------------------------------------
# surrogates cannot be written as UTF-8 and control characters (line breaks among them) are not
# supported inside CSV fields
unicode_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6)
int_ids = st.one_of(st.integers(0, 30), st.integers(-INT64, INT64 - 1), st.sampled_from([-INT64, INT64 - 1]))
text_ids = st.one_of(st.sampled_from(["alice", "bob", "ü", "東京", "🙂", "007", "+7", "-0", " 7", "1.0", "a,b",
                                      'q"r']), unicode_text)
good_ids = st.one_of(int_ids.map(str), text_ids)
bad_ids = st.one_of(st.sampled_from(["", " ", "\u3000", "  \u2028"]), st.sampled_from(MARKERS),
                    st.integers(INT64, 2 ** 80).map(str))  # beyond int64: a text id, not an error
good_values = st.one_of(st.integers(-5, 5).map(str), st.floats(-1e30, 1e30).map(repr))
bad_values = st.sampled_from(["", "inf", "-inf", "nan", "NaN", "NA", "None", "abc", "1e400", "1e39", "-1e300"])
good_times = st.one_of(st.integers(-2 ** 40, 2 ** 40).map(str), st.sampled_from(["12.5", "13.5", "1e3", "-7.25"]))
bad_times = st.sampled_from(["", "inf", "-inf", "nan", "NA", "None", "abc", "1e300", "99999999999999999999"])


def cells(good, bad, dirty: bool):
    return st.one_of(good, bad) if dirty else good


@st.composite
def tables(draw):
    """(header, rows): 1-15 rows, optional rating and timestamp columns, sometimes duplicated rows."""
    dirty = draw(st.booleans())
    header = ["user_id", "item_id"]
    if draw(st.booleans()):
        header.append("rating")
    if draw(st.booleans()):
        header.append("timestamp")
    pick = {"user_id": cells(good_ids, bad_ids, dirty), "item_id": cells(good_ids, bad_ids, dirty),
            "rating": cells(good_values, bad_values, dirty), "timestamp": cells(good_times, bad_times, dirty)}
    # a small id pool per table so that users and items repeat, as in real logs
    pools = {c: draw(st.lists(pick[c], min_size=1, max_size=5)) for c in ("user_id", "item_id")}
    rows = []
    for _ in range(draw(st.integers(1, 15))):
        rows.append([draw(st.sampled_from(pools[c])) if c in pools else draw(pick[c]) for c in header])
    if draw(st.booleans()):  # duplicate rows are events too: kept, counted twice
        rows += draw(st.lists(st.sampled_from(rows), max_size=3))
    return header, rows


# ---- the oracle ----------------------------------------------------------------------------------
def canonical_int(text: str) -> bool:
    return re.fullmatch(r"0|-?[1-9][0-9]*", text) is not None and -INT64 <= int(text) < INT64


def id_problems(column: list[str]) -> set[int]:
    """Rows a loader may name for an id column: blanks, else markers among integer ids."""
    blank = {i for i, text in enumerate(column) if text.strip() == ""}
    if blank:
        return blank
    markers = {i for i, text in enumerate(column) if text in MARKERS}
    if markers and all(canonical_int(t) for i, t in enumerate(column) if i not in markers):
        return markers
    return set()


def as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def value_problems(column: list[str]) -> set[int]:
    bad = set()
    for i, text in enumerate(column):
        number = as_float(text)
        with np.errstate(over="ignore"):
            if number is None or not math.isfinite(number) or not np.isfinite(np.float32(number)):
                bad.add(i)
    return bad


def time_problems(column: list[str]) -> set[int]:
    return {i for i, text in enumerate(column)
            if (n := as_float(text)) is None or not math.isfinite(n) or abs(n) >= INT64}


def expected_ids(column: list[str]) -> list:
    return [int(t) for t in column] if all(canonical_int(t) for t in column) else list(column)


def problems_of(header: list[str], rows: list[list[str]]) -> set[tuple[int, str]]:
    """(row index, column name) of every cell a loader may name; empty for a clean table."""
    check = {"user_id": id_problems, "item_id": id_problems, "rating": value_problems, "timestamp": time_problems}
    found = set()
    for j, name in enumerate(header):
        found |= {(i, name) for i in check[name]([row[j] for row in rows])}
    return found


def assert_one_clean_error(error: RecstackError, where: str, label: str, problems: set[tuple[int, str]],
                           offset: int) -> None:
    message = str(error)
    assert "\n" not in message, message
    match = re.fullmatch(rf"{re.escape(where)}, {label} (\d+)(?: \(0-based\))?, column '([^']*)': .+; .+", message)
    assert match, message
    assert (int(match.group(1)) - offset, match.group(2)) in problems, (message, sorted(problems))


def assert_round_trip(source, header: list[str], rows: list[list[str]], typed: dict[str, list]) -> None:
    raw = read_table(source)
    assert raw["user"].tolist() == typed["user_id"] and raw["item"].tolist() == typed["item_id"]
    if "rating" in header:
        assert raw["value"].tolist() == typed["rating"]
    if "timestamp" in header:
        assert raw["timestamp"].tolist() == typed["timestamp"]
    log = load_table(source).interactions
    assert len(log) == len(rows)
    assert log.users.ids.tolist() == list(dict.fromkeys(typed["user_id"]))  # first appearance
    assert log.items.ids.tolist() == list(dict.fromkeys(typed["item_id"]))
    n = len(rows)
    expected = Counter(zip(typed["user_id"], typed["item_id"],
                           np.float32(typed.get("rating", [0.0] * n)).tolist(), typed.get("timestamp", [0] * n)))
    value = log.value if log.value is not None else np.zeros(n, np.float32)
    timestamp = log.timestamp if log.timestamp is not None else np.zeros(n, np.int64)
    got = Counter(zip(log.users.id_of(log.user).tolist(), log.items.id_of(log.item).tolist(),
                      value.tolist(), timestamp.tolist()))
    assert got == expected


# ---- CSV files -----------------------------------------------------------------------------------
def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@SETTINGS
@given(table=tables())
def test_a_csv_loads_exactly_or_fails_with_one_located_error(tmp_path, table):
    header, rows = table
    path = write_csv(tmp_path / "log.csv", header, rows)
    problems = problems_of(header, rows)
    event("refused" if problems else "loaded")
    if problems:
        with pytest.raises(RecstackError) as info:
            load_table(path)
        assert_one_clean_error(info.value, str(path), "line", problems, offset=2)  # 1-based, after the header
        return
    columns = {name: [row[j] for row in rows] for j, name in enumerate(header)}
    typed = {"user_id": expected_ids(columns["user_id"]), "item_id": expected_ids(columns["item_id"])}
    if "rating" in header:
        typed["rating"] = [float(t) for t in columns["rating"]]
    if "timestamp" in header:
        typed["timestamp"] = [int(np.rint(float(t))) for t in columns["timestamp"]]
    assert_round_trip(path, header, rows, typed)


# ---- data frames of Python objects -----------------------------------------------------------------
frame_ids = st.one_of(st.integers(0, 20), st.integers(-INT64, INT64 - 1), st.integers(INT64, 2 ** 70),
                      st.sampled_from(["alice", "ü", "7", "007"]), unicode_text)
frame_bad_ids = st.sampled_from([None, math.nan, "", " ", "nan", "NA"])
frame_values = st.one_of(st.integers(-5, 5), st.floats(-1e30, 1e30))
frame_bad_values = st.sampled_from([None, math.nan, math.inf, -math.inf, "x", 1e300])
frame_times = st.one_of(st.integers(-2 ** 40, 2 ** 40), st.sampled_from([12.5, 1e3]))
frame_bad_times = st.sampled_from([None, math.nan, math.inf, -math.inf, 1e300])


def is_missing(cell) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


@st.composite
def frames(draw):
    dirty = draw(st.booleans())
    columns = {"user_id": cells(frame_ids, frame_bad_ids, dirty), "item_id": cells(frame_ids, frame_bad_ids, dirty)}
    if draw(st.booleans()):
        columns["rating"] = cells(frame_values, frame_bad_values, dirty)
    if draw(st.booleans()):
        columns["timestamp"] = cells(frame_times, frame_bad_times, dirty)
    n = draw(st.integers(1, 10))
    return {name: draw(st.lists(cell, min_size=n, max_size=n)) for name, cell in columns.items()}


def frame_problems(data: dict[str, list]) -> set[tuple[int, str]]:
    found = set()
    for name, column in data.items():
        missing = {i for i, cell in enumerate(column) if is_missing(cell)}
        if name in ("user_id", "item_id"):
            text = ["" if i in missing else str(cell) for i, cell in enumerate(column)]
            bad = missing | id_problems(text)
        elif name == "rating":
            with np.errstate(over="ignore"):
                bad = missing | {i for i, c in enumerate(column) if i not in missing and (
                    isinstance(c, str) or not np.isfinite(np.float32(c)))}
        else:
            bad = missing | {i for i, c in enumerate(column) if i not in missing and (
                not math.isfinite(c) or abs(c) >= INT64)}
        found |= {(i, name) for i in bad}
    return found


@SETTINGS
@given(data=frames())
def test_a_data_frame_loads_exactly_or_fails_with_one_located_error(data):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({name: pd.Series(column, dtype=object) for name, column in data.items()})
    header, rows = list(data), [list(row) for row in zip(*data.values())]
    problems = frame_problems(data)
    event("refused" if problems else "loaded")
    if problems:
        with pytest.raises(RecstackError) as info:
            load_table(frame)
        assert_one_clean_error(info.value, "the data frame", "row", problems, offset=0)
        return
    # ids are compared as the text they print as, then as integers where every one is an int64
    typed = {name: expected_ids([str(cell) for cell in data[name]]) for name in ("user_id", "item_id")}
    if "rating" in data:
        typed["rating"] = [float(cell) for cell in data["rating"]]
    if "timestamp" in data:
        typed["timestamp"] = [int(np.rint(cell)) for cell in data["timestamp"]]
    assert_round_trip(frame, header, rows, typed)
