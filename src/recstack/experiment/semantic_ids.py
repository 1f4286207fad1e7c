"""Items' semantic IDs for CTR features (Singh et al., "Better Generalization with Semantic IDs: A Case
Study in Ranking for Recommendations", RecSys 2024): content vector -> residual quantiser -> L codes.

The paper quantises a frozen content embedding of every video with an RQ-VAE (TIGER's, Rajput et al.
2023) and feeds tokens of the resulting code sequence to the ranker in place of the hashed video id.
Here the content is an item modality (`recstack.data.modalities`): `text` (the item texts through
MiniLM, offline from the installed package, or TF-IDF + SVD) or `structure` (genre multi-hot and
year), and the quantiser is a tokenizer of `recstack.models.generative` (`rqvae`, the paper's, or
`rkmeans`, residual k-means). Only the L base codes are used, without the collision token TIGER
appends to make codes unique: in ranking two items with the same content may share an ID, that is
the generalisation the paper is after (and an item-id field can be kept beside it).

The quantiser is fitted on ALL items' content vectors: content is known for an item that has no
interaction yet (that is the premise of the method), and no interaction or label enters, so the
split cannot leak through it. The codes are cached beside the text embeddings
(`<cache>/embeddings/semantic-ids-<key>.npz`), the key a hash of the content's fingerprint and every
quantiser setting, and are handed to the data layer as a plain `(n_items, L)` array
(`recstack.data.ctr.make_ctr_split(codes=...)`): `recstack.data` never imports a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.dataset import Dataset

CONTENT_SOURCES = ("text", "structure")
QUANTISERS = ("rqvae", "rkmeans")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class SemanticIDSettings:
    """How an item's semantic ID is made: which content, which quantiser, how many codes."""

    source: str = "text"  # an item modality: text | structure
    text_encoder: str = "minilm"  # for source text: minilm, tfidf, or a local sentence-transformers folder
    quantiser: str = "rqvae"  # rqvae (the paper's) | rkmeans
    levels: int = 3
    codebook_size: int = 64
    quantiser_params: dict[str, Any] = field(default_factory=dict)  # e.g. {epochs: 200, seed: 0}

    def tokenizer_params(self) -> dict[str, Any]:
        """The quantiser's config: its own defaults, quiet, seed 0 (the codes describe content, so they
        stay the same whatever the ranking models' seed), then the levels and sizes, then the user's."""
        return {"seed": 0, **({"verbose": False} if self.quantiser == "rqvae" else {}),
                **self.quantiser_params, "n_levels": self.levels, "codebook_size": self.codebook_size}

    def key(self) -> dict[str, Any]:
        return {**asdict(self), "quantiser_params": dict(sorted(self.quantiser_params.items()))}


def check_settings(settings: SemanticIDSettings) -> None:
    """Validate the quantiser and its parameters (raises ConfigError / ValueError naming the key)."""
    from recstack.models.generative.semantic_ids import resolve_tokenizer
    from recstack.models.protocol import make_config

    if settings.source not in CONTENT_SOURCES:
        raise ValueError(f"source must be one of {', '.join(CONTENT_SOURCES)} (or column, for codes in the item "
                         f"table), got {settings.source!r}")
    if settings.quantiser not in QUANTISERS:
        raise ValueError(f"quantiser must be one of {', '.join(QUANTISERS)}, got {settings.quantiser!r}")
    cls = resolve_tokenizer(settings.quantiser)
    make_config(cls.Config, settings.tokenizer_params())


def content_vectors(dataset: Dataset, settings: SemanticIDSettings, *, cache: bool = True,
                    cache_dir: Any = None):
    """The item modality the codes quantise (`ItemModality`, rows in item-index order)."""
    from recstack.data.modalities import structure_modality, text_modality

    if settings.source == "text":
        return text_modality(dataset, settings.text_encoder, cache=cache, cache_dir=cache_dir)
    if settings.source == "structure":
        return structure_modality(dataset)
    raise ValueError(f"source must be one of {', '.join(CONTENT_SOURCES)}, got {settings.source!r}")


def _cache_path(cache_dir: Any, key: str) -> Path:
    from recstack.data.features import embeddings_home

    return embeddings_home(cache_dir) / f"semantic-ids-{key}.npz"


def _read(path: Path, n_items: int, levels: int) -> tuple[np.ndarray, dict] | None:
    try:
        with np.load(path, allow_pickle=False) as bundle:
            codes, header = bundle["codes"], json.loads(str(bundle["header"]))
    except (OSError, ValueError, KeyError):
        return None  # unreadable: recompute and overwrite
    return (codes, header) if codes.shape == (n_items, levels) else None


def _write(path: Path, codes: np.ndarray, header: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # written aside, then renamed: a reader never sees half a file
            np.savez(handle, codes=codes, header=np.array(json.dumps(header)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def semantic_id_codes(dataset: Dataset, settings: SemanticIDSettings, *, cache: bool = True,
                      cache_dir: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """`(n_items, levels)` int64 codes, row i for item index i, and their provenance (content, quantiser,
    collision rate, codebook use, seconds, cache file). Read from the cache when its key matches."""
    from recstack.models.generative.semantic_ids import build_tokenizer
    from recstack.train.options import FitOptions

    check_settings(settings)
    modality = content_vectors(dataset, settings, cache=cache, cache_dir=cache_dir)
    vectors = modality.aligned(dataset.interactions.items)
    n_items = dataset.interactions.n_items
    key_data = {"version": _CACHE_VERSION, "content": modality.name, "encoder": modality.provenance.get("encoder"),
                "content_fingerprint": modality.provenance.get("fingerprint"),
                "items": hashlib.sha256("\x1f".join(map(str, dataset.interactions.items.ids.tolist())).encode()
                                        ).hexdigest(),
                "settings": settings.key()}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = _cache_path(cache_dir, key)
    if cache and path.is_file():
        found = _read(path, n_items, settings.levels)
        if found is not None:
            return found[0].astype(np.int64), {**found[1], "cache": str(path), "from_cache": True}
    started = time.perf_counter()
    tokenizer = build_tokenizer(settings.quantiser, settings.tokenizer_params())
    tokenizer.fit(vectors, options=FitOptions(progress=False))
    codes = np.ascontiguousarray(tokenizer.codes_[:, :settings.levels], dtype=np.int64)  # base codes only
    stats = tokenizer.stats()
    distinct = len({tuple(row) for row in codes.tolist()})
    header = {"content": modality.describe(), "quantiser": settings.quantiser, "settings": settings.key(),
              "items": n_items, "distinct_ids": distinct,
              "collisions": int(n_items - distinct),  # items beyond one per distinct ID: left in on purpose (docstring)
              "utilisation": [round(float(u), 4) for u in stats["utilisation"]],
              "seconds": round(time.perf_counter() - started, 2), "key": key}
    if hasattr(tokenizer, "reconstruction_error_"):
        header["reconstruction_error"] = round(float(tokenizer.reconstruction_error_), 4)
    if cache:
        _write(path, codes, header)
    return codes, {**header, "cache": str(path) if cache else None, "from_cache": False}


__all__ = ["CONTENT_SOURCES", "QUANTISERS", "SemanticIDSettings", "check_settings", "content_vectors",
           "semantic_id_codes"]
