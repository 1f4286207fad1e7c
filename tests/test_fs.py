"""Atomic writes: a claimed run directory is never replaced, and nothing half-written stays behind."""

from __future__ import annotations

import errno

import pytest

from recstack.fs import CLAIM_FILE, check_writable, exclusive_directory


def test_claim_then_rename_into_place(tmp_path):
    target = tmp_path / "run"
    with exclusive_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".run.")
        assert [p.name for p in target.iterdir()] == [CLAIM_FILE]  # claimed, still empty to a reader
        (tmp / "result.txt").write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in target.iterdir()] == ["result.txt"]


def test_a_second_writer_of_the_same_path_is_refused_and_never_replaces(tmp_path):
    target = tmp_path / "run"
    first, second = exclusive_directory(target), exclusive_directory(target)
    with first as tmp:
        with pytest.raises(FileExistsError, match="being written by another run") as info:
            second.claim()
        assert info.value.errno == errno.EEXIST
        (tmp / "result.txt").write_text("first")
    with pytest.raises(FileExistsError, match="already exists"):
        with exclusive_directory(target):
            pass
    assert (target / "result.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failure_removes_the_temporary_directory_and_the_claim(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with exclusive_directory(tmp_path / "made") as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(RuntimeError):
        with exclusive_directory(given):
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["given"] and list(given.iterdir()) == []  # as it was found


def test_a_file_at_the_path_is_not_claimed(tmp_path):
    (tmp_path / "run").write_text("a file")
    with pytest.raises(FileExistsError, match="already exists"):
        exclusive_directory(tmp_path / "run").claim()
    assert (tmp_path / "run").read_text() == "a file"


def test_check_writable_leaves_nothing_and_names_the_blocking_file(tmp_path):
    check_writable(tmp_path / "not" / "yet" / "made")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError) as info:
        check_writable(tmp_path / "file" / "runs")
    assert info.value.filename == str(tmp_path / "file")
