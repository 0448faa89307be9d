"""The ccg stage in the Snakemake DAG: planned only with a ccg section, and a real run of it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.workflow.test_workflow import planned_rules, snakemake

pytestmark = pytest.mark.workflow

EXAMPLE = ROOT / "config" / "examples" / "ccg_double_well.yaml"


def small_config(tmp_path, **train):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["campaign"] = "ccg-small"
    cfg["ccg"]["train"].update({"steps": 300, "checkpoint_interval": 100, **train})
    cfg["ccg"]["estimate"].update({"samples_per_point": 1000, "grid_points": 20, "bootstrap": 50})
    path = tmp_path / "ccg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ccg_rules_are_planned_only_with_a_ccg_section(tmp_path, cli_env):
    with_ccg = snakemake("-n", "--configfile", EXAMPLE, "-d", tmp_path, env=cli_env)
    assert with_ccg.returncode == 0, with_ccg.stderr
    assert {"reconstruct", "ccg_fes", "sample", "fes"} <= planned_rules(with_ccg.stdout)
    without = snakemake("-n", "--configfile", ROOT / "config" / "examples" / "double_well.yaml", "-d", tmp_path,
                        env=cli_env)
    assert without.returncode == 0, without.stderr
    assert not {"reconstruct", "ccg_fes"} & planned_rules(without.stdout)


def test_flow_needs_fg_frames_only_for_samples_conditioning(tmp_path, cli_env):
    target = "results/ccg-small/ccg/summary.json"
    grid = snakemake("-n", "--configfile", small_config(tmp_path), "-d", tmp_path, target, env=cli_env)
    assert grid.returncode == 0, grid.stderr
    assert planned_rules(grid.stdout) == {"reconstruct", "ccg_fes"}
    samples = snakemake("-n", "--configfile", small_config(tmp_path, conditioning="samples"), "-d", tmp_path, target,
                        env=cli_env)
    assert samples.returncode == 0, samples.stderr
    assert "sample" in planned_rules(samples.stdout)


def test_ccg_stage_end_to_end(tmp_path, cli_env):
    config = small_config(tmp_path)
    target = "results/ccg-small/ccg/summary.json"  # relative to the working directory -d
    out = tmp_path / "results" / "ccg-small" / "ccg"
    run = snakemake("--configfile", config, "-d", tmp_path, "--cores", "1", target, env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["fg_md_steps"] == 0 and summary["fg_frames_used"] == 0
    assert summary["n_untrusted"] == 0 and summary["vs_exact"]["n_untrusted_in_region"] == 0
    assert summary["max_abs_error_vs_exact_kT"] < 0.25
    assert summary["energy_evaluations_total"] == 300 * 256 + 20 * 1000
    assert summary["provenance"]["versions"]["torch"]

    fes = pd.read_csv(out / "ccg_fes.csv")
    assert list(fes.columns) == ["x", "F_kJmol", "F_err_kJmol", "mean_force_kJmol_nm", "mean_force_err_kJmol_nm",
                                 "ess", "ess_fraction", "trusted", "F_exact_kJmol"]
    assert len(fes) == 20 and fes.F_kJmol.min() == 0.0 and fes.trusted.all()
    diag = pd.read_csv(out / "diagnostics.csv")
    assert {"x", "ess", "ess_fraction", "pareto_k", "trusted", "samples"} <= set(diag.columns)
    assert (out / "ccg_fes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.load(out / "flow.pt", weights_only=True)  # a plain state dict
    info = json.loads((out / "flow.json").read_text())
    assert info["flow"]["transforms"] == 3 and info["geometry"]["coordinates"] == ["x", "y"]
    assert not (out / "flow.checkpoint.pt").exists()

    # estimation-only edits rerun ccg_fes but keep the flow
    changed = tmp_path / "changed.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["ccg"]["estimate"]["samples_per_point"] = 500
    changed.write_text(yaml.safe_dump(cfg))
    dry = snakemake("-n", "--configfile", changed, "-d", tmp_path, target, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    planned = planned_rules(dry.stdout)
    assert "ccg_fes" in planned and "reconstruct" not in planned, dry.stdout


def test_ccg_beside_the_rounds_and_the_exact_pmf(tmp_path, cli_env):
    """The flow alone recovers the exact PMF on both sides of a 10 kT barrier, where the FG round
    (walkers started in one well) does not; the CCG grid (20 points) is interpolated onto from
    the analysis grid (40 bins)."""
    config = small_config(tmp_path)
    run = snakemake("--configfile", config, "-d", tmp_path, "--cores", "2", env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "results" / "ccg-small" / "ccg"
    result = json.loads((out / "comparison.json").read_text())
    assert result["ccg_vs_reference"]["coverage"] == 1.0
    assert result["ccg_reference"] == "pointwise quadrature" and result["ccg_vs_reference"]["rmse_kT"] < 0.1
    assert result["rounds_rmse_vs_reference_kT"] > 4 * result["ccg_vs_reference"]["rmse_kT"]
    assert result["rounds_fg_steps"] == 16 * 20000 and result["ccg_energy_evaluations"] > 0
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 20 and {"F_ccg_kJmol", "F_rounds_kJmol", "F_ref_kJmol", "ccg_trusted"} <= set(table)
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


ALANINE = ROOT / "config" / "examples" / "ccg_alanine.yaml"


@pytest.mark.slow
def test_alanine_ccg_stage_end_to_end(tmp_path, cli_env):
    """The alanine ccg stage through Snakemake with a tiny flow: F on a 6 x 6 grid with trust flags
    and the shipped reference beside it, and backmapped all-atom structures mdtraj reads."""
    import mdtraj
    import numpy as np

    from cgflow.config import KB

    cfg = yaml.safe_load(ALANINE.read_text())
    cfg["campaign"] = "ccg-ala-small"
    cfg["ccg"]["flow"].update({"transforms": 3, "hidden": [64]})
    cfg["ccg"]["train"].update({"steps": 300, "batch": 64, "lr": 0.003, "checkpoint_interval": 100})
    cfg["ccg"]["estimate"].update({"samples_per_point": 100, "grid_points": 6, "bootstrap": 30,
                                   "min_ess_fraction": 0.03, "min_ess": 3})
    cfg["ccg"]["backmap"].update({"frames": 20, "proposals": 300, "max_F_kJmol": 40.0})
    config = tmp_path / "ala.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = "results/ccg-ala-small/ccg/summary.json"
    dry = snakemake("-n", "--configfile", config, "-d", tmp_path, target, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert planned_rules(dry.stdout) == {"reference", "reconstruct", "ccg_fes"}
    run = snakemake("--configfile", config, "-d", tmp_path, "--cores", "1", target, env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]

    out = tmp_path / "results" / "ccg-ala-small" / "ccg"
    summary = json.loads((out / "summary.json").read_text())
    fes = pd.read_csv(out / "ccg_fes.csv")
    assert len(fes) == 36 and {"phi", "psi", "F_kJmol", "F_err_kJmol", "ess_fraction", "trusted", "F_ref_kJmol",
                               "mean_force_psi_kJmol_rad"} <= set(fes)
    trusted = fes[fes.trusted]
    assert len(trusted) > 0 and np.isfinite(trusted.F_kJmol).all() and np.isfinite(trusted.F_err_kJmol).all()
    np.testing.assert_array_equal(fes.trusted, (fes.ess_fraction >= 0.03) & (fes.ess >= 3) & np.isfinite(fes.F_kJmol))
    assert summary["fg_md_steps"] == 0 and summary["reference"] == "metadynamics_long"
    region = fes.F_ref_kJmol - fes.F_ref_kJmol.min() < 8.02 * KB * 300.0
    assert summary["vs_reference"]["n_compared"] == int((fes.trusted & region).sum())
    assert np.isfinite(summary["rmse_vs_reference_kJmol"])
    assert summary["energy_evaluations_total"] == 300 * 64 + 36 * 100 + 300

    traj = mdtraj.load(str(out / "backmapped.dcd"), top=str(out / "backmapped.pdb"))
    assert traj.n_frames == 20 and traj.n_atoms == 22 and traj.topology.n_residues == 3
    phi_psi = mdtraj.compute_dihedrals(traj, [[4, 6, 8, 14], [6, 8, 14, 16]])
    assert np.isfinite(phi_psi).all()
    assert not (out / "flow.checkpoint.pt").exists()
