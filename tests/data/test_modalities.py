"""Item modalities: built-in text and structure matrices, MMRec's feature files, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data.dataset import Dataset
from recstack.data.modalities import (ItemModality, ModalityError, dataset_modalities, read_mmrec,
                                      structure_modality, text_modality)
from recstack.testing import clustered_dataset


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return clustered_dataset()


def test_text_modality_is_aligned_with_provenance(dataset):
    text = text_modality(dataset, "tfidf", dim=16, cache=False)
    assert text.name == "text" and text.matrix.shape == (dataset.interactions.n_items, 16)
    assert text.matrix.dtype == np.float32 and np.array_equal(text.item_ids, dataset.interactions.items.ids)
    assert text.provenance["encoder"] == "tfidf-svd16" and text.provenance["version"] != ""
    assert len(text.provenance["fingerprint"]) == 64
    # a changed title changes the fingerprint (the inputs are part of it)
    table = dict(dataset.item_table, title=dataset.item_table["title"].copy())
    table["title"][0] = "Another film"
    other = text_modality(Dataset(dataset.interactions, item_table=table), "tfidf", dim=16, cache=False)
    assert other.provenance["fingerprint"] != text.provenance["fingerprint"]


def test_structure_modality_genres_and_year(dataset):
    structure = structure_modality(dataset)
    columns = structure.provenance["columns"]
    genres = sorted({g for cell in dataset.item_table["genres"] for g in cell.split("|")})
    assert columns == [f"genre:{g}" for g in genres] + ["year"]
    m = structure.matrix
    row0 = dataset.item_table["genres"][0].split("|")
    assert {columns[j].removeprefix("genre:") for j in np.flatnonzero(m[0, :-1])} == set(row0)
    assert m[:, -1].min() == 0.0 and m[:, -1].max() == 1.0
    # an unknown year (-1) takes the mean of the known ones
    table = dict(dataset.item_table, year=dataset.item_table["year"].copy())
    table["year"][3] = -1
    scaled = structure_modality(Dataset(dataset.interactions, item_table=table)).matrix[:, -1]
    assert scaled[3] == pytest.approx(np.delete(scaled, 3).mean(), abs=1e-6)


def test_aligned_takes_rows_by_item_id_and_names_missing_items():
    modality = ItemModality("image", np.array([10, 20, 30]), np.arange(6, dtype=float).reshape(3, 2))
    assert np.array_equal(modality.aligned(np.array([30, 10])), [[4, 5], [0, 1]])
    with pytest.raises(ModalityError, match=r"no row for 1 of 2 item\(s\), e\.g\. item 99"):
        modality.aligned(np.array([10, 99]))


def test_bad_matrices_raise_one_clear_error():
    with pytest.raises(ModalityError, match="has 2 rows but 3 items"):
        ItemModality("text", np.arange(3), np.zeros((2, 4)))
    with pytest.raises(ModalityError, match=r"NaN or infinite values in 1 row\(s\), e\.g\. row 1"):
        ItemModality("text", np.arange(3), np.array([[0.0], [np.nan], [1.0]]))


def test_image_slot_is_absent_without_files_and_unknown_names_are_refused(dataset):
    with pytest.raises(ModalityError, match="no item images"):
        dataset_modalities(dataset, ["image"])
    with pytest.raises(ModalityError, match="unknown modality 'smell'"):
        dataset_modalities(dataset, ["smell"])
    found = dataset_modalities(dataset, ["text", "structure"], tfidf_dim=8, cache=False)
    assert list(found) == ["text", "structure"]


# ---- MMRec's files --------------------------------------------------------------------------------
def write_mmrec(folder, n_items=6, image_rows=None):
    """A tiny MMRec folder: 4 users, item ids 0..n_items-1, x_label 0/1/2; user 9 only in test."""
    folder.mkdir()
    rows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 1, 0), (1, 4, 0), (1, 5, 2),
            (2, 2, 0), (2, 3, 0), (2, 0, 1), (9, 5, 2)]
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += [f"{u}\t{i}\t5\t{100 + n}\t{x}" for n, (u, i, x) in enumerate(rows)]
    (folder / f"{folder.name}.inter").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    np.save(folder / "image_feat.npy", rng.normal(size=(image_rows or n_items, 8)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.normal(size=(n_items, 5)).astype(np.float32))
    return folder


def test_read_mmrec_parts_and_features(tmp_path):
    folder = write_mmrec(tmp_path / "baby")
    mmrec = read_mmrec(folder)
    train, valid, test = mmrec.parts
    assert (len(train), len(valid), len(test)) == (6, 2, 2)  # user 9's test event dropped: no training events
    assert train.users == mmrec.dataset.interactions.users and len(mmrec.dataset.interactions) == 11
    assert set(mmrec.modalities) == {"image", "text"}
    image = np.load(folder / "image_feat.npy")
    aligned = mmrec.modalities["image"].aligned(train.items)
    assert np.array_equal(aligned, image[train.items.ids.astype(int)])  # row r is MMRec item id r
    assert len(read_mmrec(folder, drop_cold_users=False).parts[2]) == 3
    found = dataset_modalities(mmrec.dataset, ["image", "text"])
    assert found["text"].provenance["source"].endswith("text_feat.npy")


def test_mmrec_feature_rows_that_do_not_match_items_name_the_file(tmp_path):
    folder = write_mmrec(tmp_path / "sports", image_rows=5)
    with pytest.raises(ModalityError, match=r"image_feat\.npy: the image features have 5 rows but the items "
                                            r"number 6 \(item ids 0\.\.5\)"):
        read_mmrec(folder)


def test_mmrec_inter_without_split_column(tmp_path):
    folder = tmp_path / "clothing"
    folder.mkdir()
    (folder / "clothing.inter").write_text("userID\titemID\n0\t1\n")
    with pytest.raises(ModalityError, match="missing x_label"):
        read_mmrec(folder)
    with pytest.raises(ModalityError, match="no MMRec interaction file"):
        read_mmrec(tmp_path / "nothing")
