"""CG-guided rounds end to end (issue 3's acceptance): on a 2-D double well whose barrier along
x is 10 kT, a few rounds recover the exact PMF where unbiased MD with the same FG budget
never leaves its first basin."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import BIN
from tests.workflow.test_workflow import planned_rules, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

ROUNDS = {
    "campaign": "rounds",
    "seed": 2,
    "system": {"type": "toy", "potential": "double_well_2d"},
    "sampling": {"walkers": 32, "steps": 40000, "report_interval": 200},
    "guidance": {"rounds": 3, "train_steps": 600},
    "analysis": {"bins": 40, "bootstrap": 50, "peers": ["unbiased"]},
}


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    table = dry_run_stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def campaign_run(tmp_path_factory):
    cli_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    where = tmp_path_factory.mktemp("rounds")
    config = where / "rounds.yaml"
    config.write_text(yaml.safe_dump(ROUNDS))
    dry = snakemake("-n", "--configfile", config, "-d", where, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    run = snakemake("--configfile", config, "-d", where, "--cores", "2", env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]
    return where, config, job_counts(dry.stdout)


def test_every_round_is_in_the_dag_up_front(campaign_run):
    _, _, jobs = campaign_run
    assert jobs["sample"] == 4 and jobs["reweight"] == 4 and jobs["train"] == 4 and jobs["guide"] == 3
    assert jobs["peer_unbiased"] == 1 and jobs["convergence"] == 1


def test_reweight_reads_the_round_before_under_level_memory(tmp_path, cli_env):
    """With guidance.level_memory, round k's reweight job takes round k-1's weights (which cells
    it levelled) as an input; without it, no reweight job depends on another."""
    for memory in (0, 2):
        config = tmp_path / f"memory-{memory}.yaml"
        config.write_text(yaml.safe_dump({**ROUNDS, "guidance": {**ROUNDS["guidance"], "level_memory": memory}}))
        dry = snakemake("-n", "-p", "--configfile", config, "-d", tmp_path / str(memory), env=cli_env)
        assert dry.returncode == 0, dry.stderr
        commands = [line for line in dry.stdout.splitlines() if "cgflow reweight" in line]
        assert len(commands) == 4
        for command in commands:
            k = int(re.search(r"round-(\d\d)/weights.parquet >", command).group(1))
            previous = f"--previous-weights results/rounds/round-{k - 1:02d}/weights.parquet"
            assert (previous in command) == (memory > 0 and k > 0), command


def test_rounds_recover_the_exact_pmf_and_unbiased_md_does_not(campaign_run):
    where, _, _ = campaign_run
    results = where / "results" / "rounds"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["rounds"] == 4
    assert summary["rmse_vs_reference_kT"] < 0.25  # where the exact PMF is below 6 kT
    assert summary["reference_coverage"] == 1.0
    assert summary["cg_rmse_vs_reference_kT"] < 0.5  # the CG model's own free energy

    curves = summary["convergence"]
    assert curves["cgflow"]["steps_to_target"] is not None
    assert curves["unbiased"]["steps_to_target"] is None
    assert curves["unbiased"]["curve"][-1][1] > 1.0  # the other basin is never seen
    assert curves["cgflow"]["curve"][-1][0] == curves["unbiased"]["curve"][-1][0]  # same FG budget

    # both basins in the final FES; the two estimates agree
    fes = pd.read_csv(results / "fes.csv")
    kT = summary["kT_kJmol"]
    low = fes["F_ref_kJmol"] < 6 * kT
    assert (fes.loc[low & (fes.x < 0), "F_kJmol"].notna()).all() and (fes.loc[low & (fes.x > 0), "F_kJmol"].notna()).all()
    assert (fes.loc[low, "connected_share"] > 0.5).all() and summary["bins_outside_connected"] == 0
    # the CG model puts as much weight above the cutoff as the exact PMF does (its RMSE cannot see it)
    p_ref = np.exp(-fes.F_ref_kJmol / kT)
    assert summary["cg_outside_mass"] == pytest.approx(p_ref[~low].sum() / p_ref.sum(), abs=0.01)
    gaps = [r["gap_cg_vs_policy_kT"] for r in summary["per_round"][:-1]]
    assert all(np.isfinite(gaps)) and gaps[-1] < 1.0
    assert (results / "plots" / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adding_a_round_keeps_the_earlier_ones(campaign_run, cli_env):
    where, config, _ = campaign_run
    more = where / "more.yaml"
    more.write_text(yaml.safe_dump({**ROUNDS, "guidance": {**ROUNDS["guidance"], "rounds": 4}}))
    dry = snakemake("-n", "--configfile", more, "-d", where, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    jobs = job_counts(dry.stdout)
    assert jobs["sample"] == 1 and jobs["train"] == 1 and jobs["guide"] == 1, dry.stdout
    # an analysis-only change reruns no round
    other = where / "other.yaml"
    other.write_text(yaml.safe_dump({**ROUNDS, "analysis": {**ROUNDS["analysis"], "bins": 30}}))
    planned = planned_rules(snakemake("-n", "--configfile", other, "-d", where, env=cli_env).stdout)
    assert not planned & {"sample", "reweight", "train", "guide"}, planned


HILLS = {
    "campaign": "hills",
    "seed": 3,
    "system": {"type": "toy", "potential": "double_well_2d", "start": {"x": -1.0, "y": 0.0}},
    "sampling": {"walkers": 16, "steps": 8000, "report_interval": 100},
    "guidance": {"rounds": 1, "train_steps": 300, "hills": {"height": 1.5, "interval": 1000}},
    "analysis": {"bins": 40, "bootstrap": 20},
}


def test_rounds_with_hills_recover_the_exact_pmf(tmp_path, cli_env):
    """The hills layer through the whole campaign: each round writes hills.npz, the reweighting
    takes every deposition interval as a state, and two short rounds give the exact PMF of the
    10 kT double well from walkers that all start in its left basin."""
    config = tmp_path / "hills.yaml"
    config.write_text(yaml.safe_dump(HILLS))
    run = snakemake("--configfile", config, "-d", tmp_path, "--cores", "2", env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "hills"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["rmse_vs_reference_kT"] < 0.3
    assert summary["reference_coverage"] == 1.0
    for k in (0, 1):
        with np.load(results / f"round-{k:02d}" / "hills.npz") as h:
            assert h["hills"].shape[0] == 8 and h["hills"][-1].max() > 5.0  # 7 depositions in 8000 steps
    weights = pd.read_parquet(results / "round-01" / "weights.parquet")
    assert (weights.groupby("round").size() == 16 * 80).all()
    # the CG model's F is given only where frames fell, the bins past the walls being unvisited here
    fes = pd.read_csv(results / "fes.csv")
    assert fes.F_kJmol.isna().sum() >= 4 and (fes.F_cg_kJmol.isna() == fes.F_kJmol.isna()).all()


def guide_round_0(campaign, results, out):
    """``cgflow guide`` on round 0 of the campaign in ``results``, writing into ``out``."""
    from cgflow.guidance.campaign import guide_round

    r0 = results / "round-00"
    guide_round(campaign, 0, r0 / "cg.pt", [r0 / "samples.parquet"], r0 / "weights.parquet", out / "bias.npz",
                out / "starts.npz", out / "guide.json")


def test_a_model_trusted_nowhere_stops_the_round_with_the_weights_ess(campaign_run, tmp_path):
    """With e1 below any ensemble disagreement the bias would be off everywhere: the guide step
    refuses, and names the frame weights' ESS, so a user can tell a reweighting collapse from an
    undertrained model."""
    from cgflow.config import load_config

    where, _, _ = campaign_run
    results = where / "results" / "rounds"
    config = yaml.safe_load((results / "config.yaml").read_text())
    config["guidance"] |= {"e0": 1e-9, "e1": 2e-9}
    frames = len(pd.read_parquet(results / "round-00" / "samples.parquet"))  # unbiased: all weights equal
    with pytest.raises(RuntimeError, match=rf"trusted nowhere .* ESS is {frames} of {frames} frames"):
        guide_round_0(load_config(config), results, tmp_path)


def test_overfill_lifts_the_trusted_region_and_leaves_the_unvisited_unbiased(campaign_run, tmp_path):
    """guidance.overfill adds to the free-energy range the bias fills: the bias at the bottom of
    the filled basin rises by (1 - 1/gamma) overfill, nowhere falls, and where no walker has been
    (x < 0, the basin beyond the 10 kT barrier, after the unbiased round 0 started at x ~ 1)
    stays 0, so the bias now drops by up to that much across the frontier."""
    from cgflow.config import load_config
    from cgflow.guidance.bias import BiasGrid

    where, _, _ = campaign_run
    results = where / "results" / "rounds"
    config = yaml.safe_load((results / "config.yaml").read_text())
    biases = {}
    for overfill in (0.0, 5.0):
        config["guidance"]["overfill"] = overfill
        out = tmp_path / f"{overfill}"
        out.mkdir()
        campaign = load_config(config)
        guide_round_0(campaign, results, out)
        biases[overfill] = BiasGrid.load(out / "bias.npz")
    plain, lifted = biases[0.0], biases[5.0]
    x = plain.points[:, 0].reshape(plain.values.shape)
    assert lifted.values.max() - plain.values.max() == pytest.approx((1 - 1 / campaign.guidance.gamma) * 5.0, abs=1e-6)
    assert np.all(lifted.values >= plain.values - 1e-9)
    assert np.all(lifted.values[x < 0] == 0) and np.all(plain.values[x < 0] == 0)
    frontier = (plain.values == 0) & (lifted.values > 0)  # trusted, but at the top of the filled range
    assert frontier.any()


def test_barrier_is_the_largest_bias_and_lowers_the_fill(campaign_run, tmp_path):
    """guidance.barrier bounds the bias as OPES's BARRIER does: set at half the unbounded bias's
    maximum, the bias tops out at it, is lower by the difference where both are fully on (the
    basin bottom), nowhere higher, and is 0 over more of the domain (the fill stops lower)."""
    from cgflow.config import load_config
    from cgflow.guidance.bias import BiasGrid

    where, _, _ = campaign_run
    results = where / "results" / "rounds"
    config = yaml.safe_load((results / "config.yaml").read_text())
    biases = {}
    for fraction in (None, 0.5):  # barrier: none, then this fraction of the unbounded maximum
        if fraction is not None:
            config["guidance"]["barrier"] = fraction * float(biases[None].values.max())
        out = tmp_path / f"{fraction}"
        out.mkdir()
        guide_round_0(load_config(config), results, out)
        biases[fraction] = BiasGrid.load(out / "bias.npz")
    free, bounded = biases[None].values, biases[0.5].values
    barrier = config["guidance"]["barrier"]
    assert bounded.max() == pytest.approx(barrier, rel=1e-9)
    top = free == free.max()
    assert np.allclose(bounded[top], free[top] - (free.max() - barrier))
    assert np.all(bounded <= free + 1e-9)
    assert (bounded == 0).sum() > (free == 0).sum()
