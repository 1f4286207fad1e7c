"""The readers behind `recstack.data.load`, one module a format; import them from there.

- `cells`: the shared `DataFormatError`, column roles and cell checks (every refused cell worded once)
- `delimited`: CSV / TSV / "::" files parsed with pyarrow, errors naming the line
- `table`: interaction tables (delimited, Parquet, pandas / polars / arrow frames)
- `side`: side tables aligned onto a vocabulary
- `movielens`: the GroupLens archives (ml-100k, ml-1m / ml-10m, ml-latest)
- `atomic`: RecBole atomic files (.inter, .item, .user, .kg, .link)

A new format is one module here, built on `cells` and `delimited`, re-exported by `load`.
"""
