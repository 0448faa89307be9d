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
    assert planned_rules(grid.stdout) == {"campaign_config", "reconstruct", "ccg_fes"}
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
