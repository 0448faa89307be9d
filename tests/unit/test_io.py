"""Output that a kill cannot leave half-made: work folders go whole or not at all, and keep
what their checkpoints need to resume exactly."""

from __future__ import annotations

import pytest

from cgflow import io
from tests.conftest import Killed


def test_a_work_folder_killed_while_being_removed_is_gone_not_half_there(tmp_path, monkeypatch):
    work = tmp_path / ".work"
    for step in (1000, 2000, 3000):
        (work / "replica-00000").mkdir(parents=True, exist_ok=True)
        (work / "replica-00000" / f"chunk-{step:010d}.npz").write_bytes(b"frames")
    rmtree = io.shutil.rmtree

    def killed_half_way(path, ignore_errors=False):
        chunk = next(iter(sorted(path.rglob("chunk-*.npz"))), None)
        if chunk is not None:
            chunk.unlink()  # rmtree deletes entry by entry: a kill can come after any of them
            raise Killed

    monkeypatch.setattr(io.shutil, "rmtree", killed_half_way)
    with pytest.raises(Killed):
        io.remove_tree(work)
    assert not work.exists()  # a rerun finds no folder to resume from, not a folder with a hole
    monkeypatch.setattr(io.shutil, "rmtree", rmtree)
    io.remove_tree(work)
    assert list(tmp_path.iterdir()) == []


def test_a_work_folder_keeps_the_thread_count_its_checkpoints_were_made_with(tmp_path):
    """OpenMM's CPU Langevin random stream depends on its thread count: a resume with another
    one would carry on a different trajectory without a word."""
    from cgflow.sampling.engine import open_workdir

    job = {"config": "abc", "round": 0}
    assert open_workdir(tmp_path / "w", job, lambda: "CPU", 2) == ("CPU", 2)
    assert open_workdir(tmp_path / "w", job, lambda: "Reference", 1) == ("CPU", 2)
    assert open_workdir(tmp_path / "w", {**job, "round": 1}, lambda: "Reference", 1) == ("Reference", 1)
