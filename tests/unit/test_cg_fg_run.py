"""The bead-CG stage's own FG run (``cg.fg_data: own``) is a checkpointed sampling replica: it
runs on the campaign's platform, and a job killed part-way resumes from its last checkpoint
and gives the frames and forces an uninterrupted run gives."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np

from cgflow.config import load_config
from cgflow.training.bead_campaign import own_fg_run, write_fg_mapped

CONFIG = {
    "campaign": "fg", "seed": 4,
    "system": {"type": "alanine_dipeptide", "solvent": "vacuum", "cv": ["phi", "psi"]},
    # unpinned: pinning would hold the test process (and the jobs later tests start) to one core
    "sampling": {"platform": "Reference", "pin_cpu": False, "equilibration": 200, "checkpoint_interval": 1000},
    "cg": {"fg_steps": 4000, "fg_stride": 100},
}


def test_a_killed_own_fg_run_resumes_to_the_frames_of_an_uninterrupted_one(tmp_path, caplog):
    campaign = load_config(CONFIG)
    whole = own_fg_run(campaign, tmp_path / "whole")
    assert json.loads((tmp_path / "whole" / "manifest.json").read_text())["platform"] == "Reference"
    assert whole["x"].shape == (40, 10, 3) and whole["f"].shape == (40, 10, 3)

    chunks = sorted((tmp_path / "whole").glob("chunk-*.npz"))
    assert len(chunks) == 5  # every 1000 steps of 4200, and the end
    killed = tmp_path / "killed"  # what a job killed after its second checkpoint leaves
    killed.mkdir()
    for kept in [tmp_path / "whole" / "manifest.json", *chunks[:2]]:
        shutil.copy(kept, killed)
    with caplog.at_level(logging.INFO, logger="cgflow.sampling.engine"):
        resumed = own_fg_run(campaign, killed)
    assert "resuming from step 2000 of 4200" in caplog.text
    for key in ("x", "f", "phipsi"):
        np.testing.assert_array_equal(resumed[key], whole[key])


def test_the_stage_writes_the_run_and_removes_its_work_folder(tmp_path):
    campaign = load_config(CONFIG)
    out = tmp_path / "cg" / "fg_mapped.npz"
    write_fg_mapped(campaign, out)
    assert not (tmp_path / "cg" / ".work-fg").exists()
    expected = own_fg_run(campaign, tmp_path / "direct")
    with np.load(out) as data:
        for key in ("x", "f", "phipsi", "masses"):
            np.testing.assert_array_equal(data[key], expected[key])
        assert str(data["platform"]) == "Reference"
