"""Atomic writes: the destination holds its old content or the whole new one, never a part."""

from __future__ import annotations

import pytest

from datastore.atomic import replace_folder, write_bytes, write_json, write_text, writing


def test_files_replace_their_destination_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "a.json"
    write_text(target, "old")
    write_json(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}'
    write_bytes(tmp_path / "secret", b"x", private=True)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "secret"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), writing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_folders_are_replaced_whole_from_a_builder_or_a_written_folder(tmp_path):
    dest = tmp_path / "final"
    replace_folder(lambda folder: (folder / "v1").write_text("1"), dest)
    written = tmp_path / ".tmp-final"
    written.mkdir()
    (written / "v2").write_text("2")
    assert replace_folder(written, dest) == dest
    assert [p.name for p in dest.iterdir()] == ["v2"]

    def broken(folder):
        (folder / "v3").write_text("3")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        replace_folder(broken, dest)
    assert [p.name for p in dest.iterdir()] == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
