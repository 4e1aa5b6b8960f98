"""specdec.files.atomic_folder: a folder written whole or not at all, replacing or merged into the old one."""

from __future__ import annotations

import os

import pytest

from specdec.files import atomic_folder


def _write(folder, files: dict) -> None:
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def _read(folder) -> dict:
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


class Boom(Exception):
    pass


@pytest.mark.parametrize("old", [None, {"old.txt": "old", "config.json": "v1"}])
def test_success_replaces_the_folder(tmp_path, old):
    path = tmp_path / "out" / "head"  # the parent is created too
    if old is not None:
        path.mkdir(parents=True)
        _write(path, old)
    with atomic_folder(path) as tmp:
        assert os.path.dirname(tmp) == str(path.parent) and os.listdir(tmp) == []
        assert (old is None and not path.exists()) or _read(path) == old  # untouched while the block runs
        _write(tmp, {"config.json": "v2", "model.bin": "w"})
    assert _read(path) == {"config.json": "v2", "model.bin": "w"}  # the old folder's other files are gone
    assert os.listdir(path.parent) == ["head"]  # neither the temporary folder nor the old one is left


@pytest.mark.parametrize("merge", [False, True])
def test_exception_inside_keeps_the_old_contents(tmp_path, merge):
    path = tmp_path / "head"
    path.mkdir()
    _write(path, {"config.json": "v1", "old.txt": "old"})
    with pytest.raises(Boom):
        with atomic_folder(path, merge=merge) as tmp:
            _write(tmp, {"config.json": "v2"})
            raise Boom
    assert _read(path) == {"config.json": "v1", "old.txt": "old"}
    assert os.listdir(tmp_path) == ["head"]  # the temporary folder is removed


def test_exception_inside_without_an_old_folder_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_folder(tmp_path / "head") as tmp:
            _write(tmp, {"config.json": "v2"})
            raise Boom
    assert os.listdir(tmp_path) == []


def test_merge_replaces_the_files_written_and_keeps_the_others(tmp_path):
    path = tmp_path / "run"
    (path / "checkpoints").mkdir(parents=True)
    _write(path, {"config.json": "v1", "train_log.csv": "step\n"})
    with atomic_folder(path, merge=True) as tmp:
        _write(tmp, {"config.json": "v2", "model.bin": "w"})
    assert sorted(os.listdir(path)) == ["checkpoints", "config.json", "model.bin", "train_log.csv"]
    assert [(path / n).read_text() for n in ("config.json", "model.bin", "train_log.csv")] == ["v2", "w", "step\n"]
    assert os.listdir(tmp_path) == ["run"]


def test_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    path = tmp_path / "head"
    path.mkdir()
    _write(path, {"config.json": "v1"})
    real_replace, calls = os.replace, []

    def replace_failing_the_second_time(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_the_second_time)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_folder(path) as tmp:
            _write(tmp, {"config.json": "v2"})
    assert _read(path) == {"config.json": "v1"}
    assert os.listdir(tmp_path) == ["head"]


def test_a_leftover_temporary_folder_is_cleared_and_a_file_is_refused(tmp_path):
    stale = tmp_path / f".head.tmp-{os.getpid()}"  # what a killed process of the same id left
    stale.mkdir()
    _write(stale, {"half.bin": "x"})
    with atomic_folder(tmp_path / "head") as tmp:
        assert os.listdir(tmp) == []
    assert os.listdir(tmp_path) == ["head"]
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        with atomic_folder(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "not a folder"


def test_store_json_entry_keeps_concurrent_updates_of_other_keys(tmp_path, monkeypatch):
    """Writers of different keys at the same time (two runs measuring their own keys) lose nothing: each
    update rereads the file under the lock. The read is slowed so that unlocked updates would overlap."""
    import threading
    import time

    from specdec import files

    path = tmp_path / "cache.json"
    real_read = files.read_json_store

    def slow_read(p):
        store = real_read(p)
        time.sleep(0.002)
        return store

    monkeypatch.setattr(files, "read_json_store", slow_read)

    def writer(w: int) -> None:
        for i in range(15):
            files.store_json_entry(path, f"w{w}-{i}", {"rows": i})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = real_read(path)
    assert sorted(store) == sorted(f"w{w}-{i}" for w in range(6) for i in range(15))
    assert store["w3-7"] == {"rows": 7}


def test_store_json_entry_replaces_a_damaged_cache_and_ignores_a_read_only_home(tmp_path):
    from specdec.files import read_json_store, store_json_entry

    path = tmp_path / "cache.json"
    path.write_text("{not json")
    store_json_entry(path, "a", 1)
    assert read_json_store(path) == {"a": 1}
    store_json_entry(path, "b", [2])
    assert read_json_store(path) == {"a": 1, "b": [2]}
    if os.geteuid() != 0:  # root writes through read-only modes
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            store_json_entry(ro / "cache.json", "a", 1)  # no error: measured again next time
            assert not (ro / "cache.json").exists()
        finally:
            ro.chmod(0o700)
