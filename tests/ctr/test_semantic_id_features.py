"""Semantic-ID and hashed item features (Singh et al., RecSys 2024; issue 16): token construction by
hand, SPM pieces and segmentation by hand, the stable hash, unseen items sharing tokens, config
errors named, and a small end-to-end fit where only the semantic ID can tell a new item's kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from recstack.data import Interactions, Vocab
from recstack.data.ctr import FeatureError, FieldSpec, fit_features, item_cold_split, make_ctr_split
from recstack.data.dataset import Dataset
from recstack.data.semantic_tokens import (hash_buckets, learn_pieces, ngram_tokens, parse_codes, semantic_tokens,
                                           stable_hash)
from recstack.experiment.config import ExperimentConfigError, parse_config

from .conftest import planted_dataset

# ---- tokens of a known code -------------------------------------------------------------------------


def test_ngram_tokens_of_a_known_semantic_id():
    code = (5, 2, 7)
    assert ngram_tokens(code, "unigram") == ["0:5", "1:2", "2:7"]  # (level, code)
    assert ngram_tokens(code, "bigram") == ["0:5-2", "1:2-7"]  # (level l, c_l, c_l+1)
    assert ngram_tokens(code, "prefix") == ["5", "5-2", "5-2-7"]  # prefixes of length 1..L
    assert ngram_tokens((2, 5, 7), "unigram")[:2] == ["0:2", "1:5"]  # the same code at another level differs
    assert ngram_tokens((4,), "bigram") == ["0:4"]  # one level: its unigram


# corpus: (1,2,3) x10 rows, (1,2,4) x3, (1,5,6) x1, (7,2,3) x1. Alphabet: 0:1 0:7 1:2 1:5 2:3 2:4 2:6 (7).
# Pair weights: (0:1,1:2) 13, (1:2,2:3) 11, (1:2,2:4) 3, the others 1. Merge 1: 0:1-2 (13); then
# (0:1-2, 2:3) 10 -> 0:1-2-3; then (0:1-2, 2:4) 3 -> 0:1-2-4; the rest weigh 1 < min_count 2: stop.
CORPUS = [(1, 2, 3), (1, 2, 4), (1, 5, 6), (7, 2, 3)]
ROWS = [10, 3, 1, 1]


def test_spm_merges_the_heaviest_pairs_first_by_hand():
    vocab = learn_pieces(CORPUS, ROWS, vocab_size=100)
    assert vocab.n_alphabet == 7 and vocab.n_merges == 3
    assert {p for p in vocab.pieces if len(p[1]) > 1} == {(0, (1, 2)), (0, (1, 2, 3)), (0, (1, 2, 4))}
    assert vocab.tokens((1, 2, 3)) == ["0:1-2-3"]  # the head item: one piece of its own (memorisation)
    assert vocab.tokens((1, 5, 6)) == ["0:1", "1:5", "2:6"]  # a tail item: split into shared pieces
    assert vocab.tokens((7, 2, 3)) == ["0:7", "1:2", "2:3"]  # (1:2, 2:3) is left at weight 1 after merge 2
    assert vocab.tokens((1, 2, 9)) == ["0:1-2", "2:9"]  # a new item: greedy longest match, then its own code


def test_spm_stops_at_its_vocabulary_size():
    vocab = learn_pieces(CORPUS, ROWS, vocab_size=8)  # the alphabet (7) and one merge
    assert vocab.n_merges == 1 and (0, (1, 2)) in vocab.pieces
    assert vocab.tokens((1, 2, 3)) == ["0:1-2", "2:3"]
    assert learn_pieces(CORPUS, ROWS, vocab_size=5).tokens((1, 2, 3)) == ["0:1", "1:2", "2:3"]  # below the alphabet


def test_spm_pieces_come_from_training_items_only():
    tokens, info = semantic_tokens(CORPUS, "spm", train_weight=[10, 3, 0, 0], spm_vocab=100)
    assert info["alphabet"] == 4 and info["merges"] == 3  # 0:1 1:2 2:3 2:4; (1,5,6), (7,2,3) are not trained on
    assert tokens[0] == ["0:1-2-3"] and tokens[3] == ["0:7", "1:2", "2:3"]


# ---- the stable hash ----------------------------------------------------------------------------------

def test_the_hash_is_pinned_and_the_same_in_another_process():
    assert stable_hash("item-42") == 12897762211831789163  # BLAKE2b-64 keyed by seed 0: never change silently
    assert stable_hash("item-42", seed=1) == 9166224338182690118
    assert hash_buckets(["item-42"], 500)[0] == 12897762211831789163 % 500
    code = "from recstack.data.semantic_tokens import hash_buckets; print(hash_buckets(['item-42', '7'], 500).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # Python's own str hash would differ here
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == hash_buckets(["item-42", "7"], 500).tolist()


def test_the_hash_spreads_values_over_the_buckets():
    buckets = hash_buckets([str(i) for i in range(20_000)], 100)
    counts = np.bincount(buckets, minlength=100)
    assert counts.min() > 140 and counts.max() < 260  # expected 200 each (binomial sd 14)
    other = hash_buckets([str(i) for i in range(20_000)], 100, seed=1)
    assert (other == buckets).mean() < 0.05  # another seed: an independent bucketing


# ---- features -------------------------------------------------------------------------------------------

def catalogue(codes_column: bool = False) -> Dataset:
    """4 users, 4 items; training rows (below) touch items 0, 1, 2; item 3 is never seen."""
    inter = Interactions([0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 3], Vocab(np.arange(4)),
                         Vocab(np.array(["i0", "i1", "i2", "i3"], dtype=object)),
                         value=np.array([5, 1, 4, 2, 3, 5], dtype=np.float32))
    table = {"genre": np.array(["a", "b", "a", "b"], dtype=object)}
    if codes_column:
        table["sid"] = np.array(["1 2 3", "1-2-4", "1,5,6", "1 2 9"], dtype=object)
    return Dataset(inter, item_table=table)


CODES = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 6], [1, 2, 9]])
TRAIN = (np.array([0, 1, 2, 3, 0]), np.array([0, 1, 2, 0, 1]))  # item 0 twice, item 1 twice, item 2 once


def _ids(features, item: int, field: str) -> list[int]:
    """The ids of `field` (an item-side field) for `item`, padding left out."""
    f = [name for name in features.fields if features.info[name]["table"] == "item"].index(field)
    row, weight = features.item_index[item, f], features.item_weight[item, f]
    return row[weight != 0].tolist()


@pytest.mark.parametrize("scheme", ["unigram", "prefix", "spm"])
def test_an_unseen_item_shares_tokens_with_similar_seen_items(scheme):
    spec = FieldSpec("sid", kind="semantic_id", tokens=scheme, spm_vocab=7)  # spm: the alphabet (6) + 0:1-2
    features = fit_features(catalogue(), [spec], *TRAIN, codes={"sid": CODES})
    oov = features.info["sid"]["offset"]
    new, similar, other = _ids(features, 3, "sid"), _ids(features, 0, "sid"), _ids(features, 2, "sid")
    assert set(new) & set(similar) - {oov}, "the new item (1,2,9) shares a token with (1,2,3)"
    assert oov in new  # ... but its finest code (level 2, 9) was never seen: OOV
    assert oov not in similar and oov not in other
    if scheme == "prefix":  # '1' and '1-2' shared with item 0, '1' only with item 2
        assert new[:2] == similar[:2] and new[0] == other[0] and new[1] != other[1]
    assert features.info["sid"]["unseen_items"] == 1 and features.info["sid"]["unseen_items_with_an_oov_token"] == 1


def test_semantic_tokens_are_summed_or_averaged():
    summed = fit_features(catalogue(), [FieldSpec("sid", kind="semantic_id", tokens="prefix")], *TRAIN,
                          codes={"sid": CODES})
    mean = fit_features(catalogue(), [FieldSpec("sid", kind="semantic_id", tokens="prefix", pooling="mean")], *TRAIN,
                        codes={"sid": CODES})
    np.testing.assert_allclose(summed.item_weight[0, 0], [1, 1, 1])  # the paper sums the token embeddings
    np.testing.assert_allclose(mean.item_weight[0, 0], [1 / 3] * 3)
    np.testing.assert_array_equal(summed.item_index, mean.item_index)


def test_codes_can_come_from_an_item_table_column():
    assert parse_codes(["1 2 3", "4-5", None, [7, 8]]) == [[1, 2, 3], [4, 5], [], [7, 8]]
    from_column = fit_features(catalogue(codes_column=True), [FieldSpec("sid", kind="semantic_id")], *TRAIN)
    given = fit_features(catalogue(), [FieldSpec("sid", kind="semantic_id")], *TRAIN, codes={"sid": CODES})
    np.testing.assert_array_equal(from_column.item_index, given.item_index)
    with pytest.raises(FeatureError, match="feature 'sid' is a semantic_id, but no codes were given"):
        fit_features(catalogue(), [FieldSpec("sid", kind="semantic_id")], *TRAIN)
    with pytest.raises(FeatureError, match="feature 'sid': 3 semantic IDs given for 4 items"):
        fit_features(catalogue(), [FieldSpec("sid", kind="semantic_id")], *TRAIN, codes={"sid": CODES[:3]})


def test_a_hashed_id_has_no_vocabulary_and_no_oov():
    specs = [FieldSpec("item_id"), FieldSpec("item_hash", column="item_id", hash_buckets=3)]
    features = fit_features(catalogue(), specs, *TRAIN)
    offset = features.info["item_hash"]["offset"]
    ids = features.item_index[:, 1, 0]
    # the external ids are hashed (not the indices): stable when the vocabulary is reordered
    np.testing.assert_array_equal(ids - offset, hash_buckets(["i0", "i1", "i2", "i3"], 3))
    assert features.n_ids == offset + 3  # N buckets, no OOV id
    counts = features.oov_counts(np.array([0, 1]), np.array([3, 3]))
    assert counts == {"item_id": 2, "item_hash": 0}  # the unseen item has an id OOV, but a bucket
    assert features.info["item_hash"]["hash_buckets"] == 3 and features.info["item_hash"]["training_values"] == 3


def test_the_item_cold_split_holds_whole_items_out_of_training():
    items = np.repeat(np.arange(50), 20)
    train, valid, test = item_cold_split(items, (0.8, 0.1, 0.1), 0.2, seed=3)
    assert len(train) + len(valid) + len(test) == len(items)
    cold = np.setdiff1d(np.arange(50), items[train])
    assert len(cold) == 10  # 20% of the items, every row of theirs out of training
    assert np.isin(items[np.concatenate([valid, test])], cold).sum() == 200
    again = item_cold_split(items, (0.8, 0.1, 0.1), 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))


# ---- config errors ------------------------------------------------------------------------------------------

def _raw(features, **ctr):
    return {"task": "ctr", "data": "ml-100k", "ctr": {"features": features, **ctr}, "models": [{"name": "fm"}]}


@pytest.mark.parametrize("features, message", [
    ([{"name": "sid", "kind": "semantic_id", "tokens": "trigram"}], "feature 'sid': tokens must be one of"),
    ([{"name": "sid", "kind": "semantic_id", "quantiser": "vqvae"}], "feature 'sid': quantiser must be one of"),
    ([{"name": "sid", "kind": "semantic_id", "quantiser_params": {"epochz": 3}}], "feature 'sid': .*epochz"),
    ([{"name": "sid", "kind": "semantic_id", "source": "image"}], "feature 'sid': source must be one of"),
    ([{"name": "sid", "kind": "semantic_id", "spm_vocab": 100}], "feature 'sid': spm_vocab applies to tokens: spm"),
    ([{"name": "sid", "kind": "semantic_id", "levels": 0}], "feature 'sid': levels must be a positive integer"),
    ([{"name": "sid", "kind": "semantic_id", "table": "user"}], "feature 'sid': a semantic_id describes items"),
    ([{"name": "sid", "kind": "semantic_id", "source": "column", "levels": 4}], "feature 'sid': source: column"),
    ([{"name": "h", "column": "item_id", "hash_buckets": 0}], "feature 'h': hash_buckets must be a positive"),
    ([{"name": "age", "kind": "numeric", "hash_buckets": 9}], "feature 'age': hash_buckets applies to kind: categ"),
    ([{"name": "genres", "kind": "multi", "tokens": "prefix"}], "feature 'genres': tokens apply to kind: semantic_id"),
])
def test_bad_semantic_and_hash_options_are_named(features, message):
    with pytest.raises(ExperimentConfigError, match=message):
        parse_config(_raw(features), "sid.yaml")


def test_bad_model_feature_sets_and_cold_shares_are_named():
    raw = _raw([{"name": "user_id"}, {"name": "item_id"}])
    with pytest.raises(ExperimentConfigError, match=r"models\[0\] \(fm\): feature 'itemid' is not a field"):
        parse_config({**raw, "models": [{"name": "fm", "features": ["user_id", "itemid"]}]}, "sid.yaml")
    with pytest.raises(ExperimentConfigError, match="cold_items"):
        parse_config(_raw([{"name": "user_id"}], cold_items=1.0), "sid.yaml")
    config = parse_config({**raw, "models": [{"name": "fm", "features": ["item_id"]}, {"name": "fm", "label": "b"}]})
    assert [config.features_of(e) for e in config.models] == [("item_id",), ("user_id", "item_id")]


def test_missing_codes_fail_before_training_with_exit_2(planted_atomic, tmp_path):
    from typer.testing import CliRunner

    from recstack.cli import app

    raw = {"task": "ctr", "data": {"path": str(planted_atomic), "format": "atomic"},
           "output_dir": str(tmp_path / "runs"),
           "ctr": {"features": [{"name": "user_id"}, {"name": "sid", "kind": "semantic_id", "source": "column"}]},
           "models": [{"name": "fm"}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert "feature 'sid' is a semantic_id, but no codes were given" in " ".join(result.output.split())


# ---- end to end --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def titled():
    """The planted data (label = user group x item kind) with item titles that name the kind, so the
    item's content, and only its content, tells what kind a never-seen item is."""
    base = planted_dataset()
    kind = base.item_table["kind"]
    noise = np.random.default_rng(1).choice(["red", "silent", "last", "golden", "broken"], len(kind))
    title = np.array([("Frontier western saloon " if k == "x" else "Broadway musical chorus ") + w
                      for k, w in zip(kind, noise)], dtype=object)
    return Dataset(base.interactions, item_table={**base.item_table, "title": title}, user_table=base.user_table,
                   provenance={"name": "planted-titled"})


def test_new_items_are_ranked_through_their_semantic_id(titled, tmp_path):
    from recstack.evaluate.ctr import auc
    from recstack.experiment.semantic_ids import SemanticIDSettings, semantic_id_codes
    from recstack.models.ctr import build_ctr

    # the paper's RQ-VAE, small and short; TF-IDF rows are unit-norm already, and z-scoring each SVD
    # component (standardize) would lift the genre noise to the level of the kind's words
    settings = SemanticIDSettings(text_encoder="tfidf", levels=2, codebook_size=4,
                                  quantiser_params={"epochs": 60, "standardize": False})
    codes, info = semantic_id_codes(titled, settings, cache_dir=tmp_path)
    again, cached = semantic_id_codes(titled, settings, cache_dir=tmp_path)
    assert cached["from_cache"] and np.array_equal(codes, again) and codes.shape == (80, 2)
    kind = titled.item_table["kind"]
    assert all(len(set(kind[codes[:, 0] == c])) == 1 for c in np.unique(codes[:, 0]))  # level 1 separates kinds

    users = [FieldSpec("group")]
    item_sets = {"hash": [FieldSpec("item_hash", column="item_id", hash_buckets=20)],
                 "prefix": [FieldSpec("sid", kind="semantic_id", tokens="prefix")]}
    results = {}
    for name, items in item_sets.items():
        split = make_ctr_split(titled, users + items, threshold=4, seed=0, codes={"sid": codes}, cold_items=0.25)
        model = build_ctr("deepfm", {"epochs": 6, "hidden_units": [16], "batch_size": 256, "learning_rate": 0.01,
                                     "seed": 0, "verbose": False}).fit(split.train, split.valid)
        p = model.predict(split.test)
        new = ~np.isin(split.test.item, split.train.item)
        assert new.sum() > 300  # a quarter of the items: about 900 test rows never seen in training
        results[name] = (auc(split.test.label, p), auc(split.test.label[new], p[new]))
    # only content tells a new item's kind: hashing gives it a random bucket (chance), the semantic ID its kind
    # (measured: hash 0.59 on the new items' rows, 0.64 overall; prefix 0.909 and 0.908)
    assert results["hash"][1] < 0.7 and results["prefix"][1] > results["hash"][1] + 0.2
    assert results["prefix"][1] == pytest.approx(0.91, abs=0.03)  # the planted ceiling is about 0.9
    assert results["prefix"][0] == pytest.approx(0.91, abs=0.03)


def test_a_semantic_id_run_reports_rare_and_unseen_items(planted_atomic, tmp_path):
    from recstack.experiment.run import run_experiment

    raw = {"task": "ctr", "data": {"path": str(planted_atomic), "format": "atomic"},
           "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "ctr": {"cold_items": 0.2, "rare_item_rows": 5, "features": [
               {"name": "group"}, {"name": "item_id"}, {"name": "item_hash", "column": "item_id", "hash_buckets": 20},
               {"name": "sid", "kind": "semantic_id", "text_encoder": "tfidf", "quantiser": "rkmeans",
                "levels": 2, "codebook_size": 4, "tokens": "spm", "spm_vocab": 12}]},
           "models": [{"name": "fm", "label": "hash", "features": ["group", "item_hash"],
                       "params": {"epochs": 2, "batch_size": 512}},
                      {"name": "fm", "label": "sid", "features": ["group", "sid"],
                       "params": {"epochs": 2, "batch_size": 512}}]}
    result = run_experiment(raw, progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    for label in ("hash", "sid"):
        items = metrics[label]["test_items"]
        assert items["rare_below"] == 5 and items["unseen"]["rows"] > 0 and 0 <= items["unseen"]["AUC"] <= 1
        assert items["rare"]["rows"] >= items["unseen"]["rows"]
    tested = [metrics[label]["test_items"]["unseen"].get("AUC_vs_best") for label in ("hash", "sid")]
    assert sum(t is not None for t in tested) == 1  # the worse of the two, by DeLong's paired test
    assert manifest["model_features"]["sid"]["fields"] == ["group", "sid"]
    assert manifest["model_features"]["hash"]["split_fingerprint"] != manifest["model_features"]["sid"][
        "split_fingerprint"]
    assert manifest["semantic_ids"]["sid"]["quantiser"] == "rkmeans" and manifest["cold_items"] == 0.2
    assert manifest["features"]["info"]["sid"]["tokens"] == "spm"
    assert "## Rare and unseen items" in (result.run_dir / "report.md").read_text()
