"""FG sampling with OpenMM: unbiased runs recover exact PMFs, runs are repeatable, and a
killed job resumes from its checkpoints to the very output an uninterrupted run gives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cgflow.analysis.campaign import cv_edges
from cgflow.analysis.fes import compare_to_reference, histogram_fes
from cgflow.io import read_provenance
from cgflow.sampling.round import run, walker_block
from tests.conftest import kill_after_chunks


def _rmse_vs_exact(campaign, samples: pd.DataFrame, cutoff_kT: float) -> dict:
    names = list(campaign.system.cv_names)
    edges = cv_edges(campaign)
    fes = histogram_fes(samples[names].to_numpy(), edges, campaign.sampling.kT, blocks=samples["walker"].to_numpy(), n_bootstrap=20)
    exact = campaign.system.build().reference_fes(edges, campaign.sampling.temperature)
    return compare_to_reference(fes, exact, campaign.sampling.kT, cutoff_kT)


SAMPLING = {"walkers": 64, "steps": 40000, "equilibration": 2000, "report_interval": 50, "platform": "Reference"}


def test_unbiased_double_well_recovers_exact_pmf(campaign, tmp_path):
    c = campaign(sampling=SAMPLING, analysis={"bins": 40})
    df = pd.read_parquet(run(c, 0, tmp_path))
    assert sorted(df.walker.unique()) == list(range(64))
    assert len(df) == 64 * 40000 // 50
    score = _rmse_vs_exact(c, df, cutoff_kT=4.0)
    assert score["coverage"] == 1.0
    assert score["rmse_kT"] < 0.25, score


def test_unbiased_expression_with_linear_cv_recovers_exact_pmf(campaign, tmp_path):
    system = {
        "type": "toy",
        "energy": "4*(x^2-1)^2 + 0.5*x + 6*(y - 0.4*x)^2",
        "cv": {"s": "0.8*x + 0.6*y"},
        "box": {"x": [-2.0, 2.0], "y": [-2.0, 2.0]},
    }
    c = campaign(system=system, sampling=SAMPLING, analysis={"bins": 40})
    df = pd.read_parquet(run(c, 0, tmp_path))
    assert "s" in df.columns
    np.testing.assert_allclose(df.s, 0.8 * df.x_nm + 0.6 * df.y_nm)
    score = _rmse_vs_exact(c, df, cutoff_kT=4.0)
    assert score["coverage"] == 1.0
    assert score["rmse_kT"] < 0.25, score


def test_saved_energies_are_the_potential_at_the_saved_positions(campaign, tmp_path):
    c = campaign(system={"type": "toy", "potential": "muller_brown"}, sampling={"walkers": 8, "steps": 2000, "platform": "Reference"})
    df = pd.read_parquet(run(c, 0, tmp_path))
    toy = c.system.build()
    pos = df[["x_nm", "y_nm", "z_nm"]].to_numpy()
    np.testing.assert_allclose(df.potential_energy_kJmol, toy.energies(pos), rtol=1e-12)
    np.testing.assert_allclose(df.time_ps, df.step * 0.002)
    assert (df.bias_energy_kJmol == 0).all()
    prov = read_provenance(tmp_path / "samples.parquet")
    assert prov["fg_steps"] == 8 * 2000 and prov["platform"] == "Reference" and prov["round"] == 0


def test_same_seed_same_samples_other_seed_other_samples(campaign, tmp_path):
    sampling = {"walkers": 4, "steps": 3000, "platform": "Reference"}
    a = pd.read_parquet(run(campaign(sampling=sampling), 0, tmp_path / "a"))
    b = pd.read_parquet(run(campaign(sampling=sampling), 0, tmp_path / "b"))
    c = pd.read_parquet(run(campaign(sampling=sampling, seed=2), 0, tmp_path / "c"))
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.x, c.x)
    assert not (tmp_path / "a" / ".work").exists()


@pytest.mark.parametrize("n_walkers, size", [(64, 1), (64, 2), (7, 3), (2, 5)])
def test_walker_blocks_partition_the_walkers(n_walkers, size):
    blocks = [walker_block(n_walkers, size, r) for r in range(size)]
    assert sorted(w for b in blocks for w in b) == list(range(n_walkers))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def _write_config(campaign, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(campaign.resolved))
    return path


def test_killed_job_resumes_to_the_uninterrupted_output(campaign, tmp_path, cli_env):
    c = campaign(sampling={"walkers": 16, "steps": 300000, "report_interval": 100,
                           "checkpoint_interval": 15000, "platform": "Reference"})
    config = _write_config(c, tmp_path / "config.yaml")
    reference = pd.read_parquet(run(c, 0, tmp_path / "whole"))

    cmd = [sys.executable, "-m", "cgflow.cli", "sample", "--config", str(config), "--round", "0", "--out-dir", str(tmp_path / "killed")]
    n_done = kill_after_chunks(cmd, tmp_path / "killed" / ".work", 3, cli_env)
    assert 3 <= n_done < 20, "the job must be killed mid-run for this test to mean anything"
    assert not (tmp_path / "killed" / "samples.parquet").exists()

    damaged = tmp_path / "damaged"  # a chunk gone from the middle: its frames would be missing
    shutil.copytree(tmp_path / "killed", damaged)
    next((damaged / ".work").rglob("chunk-0000015000.npz")).unlink()
    with pytest.raises(RuntimeError, match="damaged"):
        run(c, 0, damaged)

    # checkpointing less often is the same sampling (no rerun of finished rounds); its resume
    # starts the killed run's work afresh, as its chunks end elsewhere
    sparser = campaign(sampling={**c.resolved["sampling"], "checkpoint_interval": 40000})
    assert sparser.stage_hash("sampling") == c.stage_hash("sampling")
    shutil.copytree(tmp_path / "killed", tmp_path / "sparser")
    pd.testing.assert_frame_equal(pd.read_parquet(run(sparser, 0, tmp_path / "sparser")), reference)

    log = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, check=True).stderr
    assert "resuming from step" in log
    resumed = pd.read_parquet(tmp_path / "killed" / "samples.parquet")
    pd.testing.assert_frame_equal(resumed, reference)
    assert _rmse_vs_exact(c, resumed, cutoff_kT=4.0)["coverage"] == 1.0


def test_md_that_blows_up_stops_the_job_and_saves_none_of_it(campaign, tmp_path):
    """A spring far too stiff for the timestep: positions go to inf/NaN within steps."""
    stiff = {"type": "toy", "energy": "1e9*x^2", "cv": "x", "box": {"x": [-1, 1]}}
    c = campaign(system=stiff, sampling={"walkers": 2, "steps": 2000, "report_interval": 100, "platform": "Reference",
                                         "pin_cpu": False})
    with pytest.raises(RuntimeError, match="not finite by step 2000: the MD blew up"):
        run(c, 0, tmp_path)
    assert not (tmp_path / "samples.parquet").exists() and not list(tmp_path.rglob("chunk-*.npz"))


def test_progress_after_a_resume_counts_only_the_steps_this_process_ran(monkeypatch, caplog):
    import logging

    from cgflow.sampling import engine

    now = [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: now[0])
    progress = engine.Progress(2 * 1000, every=0.0)
    progress.start([0], 500)  # resumed from its checkpoint at step 500
    progress.start([1], 0)
    now[0] = 10.0
    with caplog.at_level(logging.INFO, logger="cgflow.sampling.engine"):
        progress([0], 1000, 1000, 5.0)
    # 500 + 0 steps in 10 s here (not the 1000 done since the first start), 1000 still to go
    assert "1000/2000 walker-steps  50 walker-steps/s  ETA 20 s" in caplog.text


def test_work_folder_of_another_config_is_discarded(campaign, tmp_path):
    sampling = {"walkers": 2, "steps": 2000, "checkpoint_interval": 500, "platform": "Reference"}
    stale = tmp_path / ".work" / "rank-000-of-001" / "replica-00000"
    stale.mkdir(parents=True)
    (stale.parent / "manifest.json").write_text('{"job": {"config": "other"}, "platform": "Reference"}')
    (stale / "chunk-0000009999.npz").write_bytes(b"not from this job")
    df = pd.read_parquet(run(campaign(sampling=sampling), 0, tmp_path))
    assert df.step.max() == 2000 and len(df) == 2 * 2000 // 100


def test_alanine_dipeptide_run_writes_mdtraj_readable_trajectories(campaign, tmp_path):
    import mdtraj as md

    from cgflow.systems.alanine import PHI_ATOMS, PSI_ATOMS

    c = campaign(system={"type": "alanine_dipeptide", "solvent": "vacuum"}, analysis={"reference": "none"},
                 sampling={"walkers": 2, "steps": 2000, "report_interval": 50, "platform": "Reference"})
    df = pd.read_parquet(run(c, 0, tmp_path))
    assert np.isfinite(df.potential_energy_kJmol).all()
    # C7eq / beta region: phi < 0 in every frame, psi mostly positive
    assert (df.phi < 0).all() and (df.psi > 0).mean() > 0.9
    walker = [df[df.walker == w][["phi", "psi"]].to_numpy() for w in (0, 1)]
    assert not np.allclose(*walker), "both walkers ran the same trajectory: one random stream for both"
    traj = md.load(tmp_path / "traj" / "walker-0001.dcd", top=tmp_path / "traj" / "topology.pdb")
    assert traj.n_frames == 40 and traj.n_atoms == 22
    angles = md.compute_dihedrals(traj, [PHI_ATOMS, PSI_ATOMS])
    w1 = df[df.walker == 1]
    np.testing.assert_allclose(angles[:, 0], w1.phi, atol=1e-4)
    np.testing.assert_allclose(angles[:, 1], w1.psi, atol=1e-4)
