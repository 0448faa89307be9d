"""Peers of cgflow with its FG budget: OpenMM's well-tempered metadynamics (walkers sharing one
bias) recovers exact PMFs and resumes exactly after a kill; the unbiased peer and cgflow's
rounds give convergence curves (FES RMSE vs FG steps) on one budget axis."""

from __future__ import annotations

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from cgflow.analysis.campaign import cv_edges
from cgflow.analysis.convergence import (bias_error_kT, budget_schedule, cli_convergence, curve_rounds, curve_unbiased,
                                         on_target_shares, steps_to_stay, steps_to_target, write_convergence)
from cgflow.analysis.fes import FES, compare_to_reference, histogram_fes
from cgflow.analysis.reweight import mbar_weights
from cgflow.config import load_config
from cgflow.guidance.bias import BiasGrid
from cgflow.guidance.policy import SUPPORT_BINS
from cgflow.io import read_provenance
from cgflow.sampling.metadynamics import MetadSettings, cli_peer, read_snapshots, run_metadynamics
from cgflow.sampling.round import run
from tests.conftest import kill_after_chunks

DOUBLE_WELL = {"type": "toy", "potential": "double_well"}


def _campaign(sampling, guidance=None, analysis=None, system=DOUBLE_WELL):
    cfg = {"campaign": "peers", "seed": 3, "system": system,
           "sampling": {"platform": "Reference", "report_interval": 50, **sampling},
           "analysis": {"bins": 40, "rmse_cutoff_kT": 4.0, **(analysis or {})}}
    if guidance:
        cfg["guidance"] = guidance
    return load_config(cfg)


def _exact(c):
    return c.system.build().reference_fes(cv_edges(c), c.sampling.temperature)


def _hill_bias(c, snap, upto: int) -> BiasGrid:
    """The bias OpenMM tabulates from the first ``upto`` Gaussians of all walkers, rebuilt from
    the log exactly as Metadynamics._addGaussian builds its grid (1-D, non-periodic)."""
    m = MetadSettings.from_campaign(c)
    u = np.linspace(0.0, 1.0, m.grid[0])
    scaled_var = (m.width[0] / (m.upper[0] - m.lower[0])) ** 2
    x = (snap["hills_cv"][:upto, 0] - m.lower[0]) / (m.upper[0] - m.lower[0])
    values = (snap["hills_height"][:upto, None] * np.exp(-0.5 * (u[None, :] - x[:, None]) ** 2 / scaled_var)).sum(0)
    return BiasGrid(("x",), m.lower, m.upper, (False,), values)


@pytest.fixture(scope="module")
def double_well_metad(tmp_path_factory):
    c = _campaign({"walkers": 8, "steps": 50000})
    out = tmp_path_factory.mktemp("metad")
    return c, pd.read_parquet(run_metadynamics(c, out)), read_snapshots(out / "fes_snapshots.npz"), out


def test_metadynamics_recovers_the_exact_double_well_pmf(double_well_metad):
    c, df, snap, out = double_well_metad
    B = 8 * 50000
    np.testing.assert_array_equal(snap["budget_steps"], 8 * budget_schedule(c))
    assert snap["budget_steps"][-1] == B and read_provenance(out / "samples.parquet")["fg_steps"] == B
    assert snap["F"].shape == (c.analysis.budget_points, 40) and (snap["F"].min(axis=1) == 0).all()
    assert len(df) == 8 * 50000 // 50 and sorted(df.walker.unique()) == list(range(8))
    assert list(df.columns) == ["walker", "step", "time_ps", "x", "potential_energy_kJmol", "bias_energy_kJmol",
                                "x_nm", "y_nm", "z_nm"]
    kT = c.sampling.kT
    scores = [compare_to_reference(FES(edges=tuple(snap["edges"]), F=F, F_err=F * np.nan), _exact(c), kT, 4.0)
              for F in snap["F"]]
    print("metadynamics RMSE (kT) at the budget points:", [round(s["rmse_kT"], 3) for s in scores])
    assert scores[-1]["rmse_kT"] < 0.5, scores
    # the walkers cross the barrier and the saved frames cover both wells
    assert (df.x < -0.8).any() and (df.x > 0.8).any() and (snap["counts"][-1] > 0).mean() > 0.9


def test_all_walkers_deposit_into_one_shared_bias(double_well_metad):
    c, df, snap, _ = double_well_metad
    m = MetadSettings.from_campaign(c)
    per_walker = 50000 // m.frequency
    assert np.bincount(snap["hills_walker"]).tolist() == [per_walker] * 8
    # well-tempered heights: each Gaussian's height is h0 exp(-V/(k dT)) with V the bias of ALL
    # walkers' earlier Gaussians at its centre (a walker with its own bias would see ~1/8 of V)
    dT_kJ = c.sampling.kT * (m.bias_factor - 1)
    for i in range(0, len(snap["hills_height"]), 37):
        V = _hill_bias(c, snap, i)(snap["hills_cv"][i:i + 1])[0] if i else 0.0
        assert snap["hills_height"][i] == pytest.approx(m.height * np.exp(-V / dT_kJ), rel=1e-6, abs=1e-9)
    # a frame's bias energy is the shared bias at that frame: the last walker's last frame comes
    # after every Gaussian; the final free energy is -gamma/(gamma-1) times that bias, integrated
    # over each bin as a histogram's is (200 points a bin)
    final = _hill_bias(c, snap, len(snap["hills_height"]))
    last = df.iloc[-1]
    assert last.walker == 7 and last.bias_energy_kJmol == pytest.approx(final([[last.x]])[0], rel=1e-6)
    edges = snap["edges"][0]
    inside = edges[:-1, None] + (np.arange(200) + 0.5) / 200 * np.diff(edges)[:, None]
    F_points = -m.bias_factor / (m.bias_factor - 1) * final(inside.reshape(-1, 1)).reshape(inside.shape)
    F = -c.sampling.kT * np.log(np.mean(np.exp(-(F_points - F_points.min()) / c.sampling.kT), axis=1))
    np.testing.assert_allclose(snap["F"][-1], F - F.min(), atol=0.05)


def test_metadynamics_runs_with_its_own_bias_factor_where_given(tmp_path):
    """analysis.metadynamics.bias_factor, where given, is the bias factor OpenMM deposits with
    (each Gaussian's well-tempered height), in place of guidance.gamma, the default."""
    sampling = {"walkers": 2, "steps": 5000}
    assert MetadSettings.from_campaign(_campaign(sampling)).bias_factor == 8.0  # the toys' gamma
    c = _campaign(sampling, analysis={"metadynamics": {"bias_factor": 2.0, "frequency": 100}})
    assert c.guidance.gamma == 8.0 and MetadSettings.from_campaign(c).bias_factor == 2.0
    run_metadynamics(c, tmp_path)
    snap = read_snapshots(tmp_path / "fes_snapshots.npz")
    h0, V = MetadSettings.from_campaign(c).height, np.array(
        [_hill_bias(c, snap, i)(snap["hills_cv"][i:i + 1])[0] for i in range(1, len(snap["hills_height"]))])
    heights = snap["hills_height"][1:]
    np.testing.assert_allclose(heights, h0 * np.exp(-V / c.sampling.kT), rtol=1e-6, atol=1e-9)  # dT = (2 - 1) T
    assert np.abs(heights / (h0 * np.exp(-V / (7 * c.sampling.kT))) - 1).max() > 0.1  # not gamma's 8


def test_killed_metadynamics_resumes_to_the_uninterrupted_output(tmp_path):
    c = _campaign({"walkers": 4, "steps": 100000, "report_interval": 100, "checkpoint_interval": 10000})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(c.resolved))
    whole = pd.read_parquet(run_metadynamics(c, tmp_path / "whole"))

    code = ("from pathlib import Path; from cgflow.config import load_config; "
            "from cgflow.sampling.metadynamics import run_metadynamics; "
            f"run_metadynamics(load_config(Path({str(config)!r})), Path({str(tmp_path / 'killed')!r}))")
    work = tmp_path / "killed" / ".work"
    n_done = kill_after_chunks([sys.executable, "-c", code], work, 2)
    assert 2 <= n_done < 10, "the job must be killed mid-run for this test to mean anything"
    assert not (tmp_path / "killed" / "samples.parquet").exists()

    damaged = tmp_path / "damaged"  # the first chunk gone: its frames and Gaussians would be missing
    shutil.copytree(tmp_path / "killed", damaged)
    sorted((damaged / ".work").glob("chunk-*.npz"))[0].unlink()
    with pytest.raises(RuntimeError, match="damaged"):
        run_metadynamics(c, damaged)

    args = SimpleNamespace(config=str(config), method="metadynamics", out_dir=str(tmp_path / "killed"))
    cli_peer(args)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "killed" / "samples.parquet"), whole)
    a = read_snapshots(tmp_path / "whole" / "fes_snapshots.npz")
    b = read_snapshots(tmp_path / "killed" / "fes_snapshots.npz")
    for key in ("budget_steps", "F", "counts", "hills_walker", "hills_step", "hills_cv", "hills_height"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not work.exists()


@pytest.mark.parametrize("rounds, steps, eq, points",
                         [(0, 1000, 0, 4), (3, 1000, 100, 4), (2, 999, 7, 3), (1, 10, 0, 100)])
def test_budget_axis_is_increasing_and_ends_at_the_whole_budget(rounds, steps, eq, points):
    c = _campaign({"walkers": 2, "steps": steps, "equilibration": eq, "report_interval": 1},
                  {"rounds": rounds, "estimator": "mbar"}, {"budget_points": points})  # rounds too short for TRAM
    t = budget_schedule(c)
    assert t[0] > 0 and (np.diff(t) > 0).all() and t[-1] == (rounds + 1) * (steps + eq)
    # budget_points per round's worth of steps, one of them on each round's end
    assert len(t) == min((rounds + 1) * points, t[-1])
    assert np.isin((steps + eq) * np.arange(1, rounds + 2), t).all()


def test_steps_to_target_is_the_first_budget_at_or_below_target():
    curve = pd.DataFrame({"method": "x", "fg_steps": [400, 100, 300, 200, 500],
                          "rmse_kT": [0.6, np.nan, 0.4, 1.5, 0.3], "coverage": 1.0})
    assert steps_to_target(curve, 0.5) == 300
    assert steps_to_target(curve, 0.6) == 300
    assert steps_to_target(curve, 0.3) == 500
    assert steps_to_target(curve, 0.2) is None
    # from when it stays there: the 0.6 at 400 breaks the run of 0.5, a missing point any run
    assert [steps_to_stay(curve, t) for t in (0.5, 0.6, 0.3, 0.2, 2.0)] == [500, 300, 500, None, 200]
    assert steps_to_stay(curve.assign(rmse_kT=[0.6, 0.1, 0.4, 0.1, 0.3]), 0.5) == 500


@pytest.fixture(scope="module")
def short_campaign(tmp_path_factory):
    """Two rounds (round 1 under a bias) and both peers, with one FG budget."""
    root = tmp_path_factory.mktemp("campaign")
    # MBAR, so the curve can be checked against pymbar directly (TRAM: tests/unit/test_tram.py)
    c = _campaign({"walkers": 32, "steps": 10000, "equilibration": 500}, {"rounds": 1, "estimator": "mbar"})
    r0 = run(c, 0, root / "round-00")
    x = np.linspace(-2.0, 2.0, 101)
    # well-tempered flattening of the double well, -(1 - 1/gamma) U, as cgflow's bias aims at
    bias = BiasGrid(("x",), (-2.0,), (2.0,), (False,), -(1 - 1 / c.guidance.gamma) * 6 * (x**2 - 1) ** 2)
    bias.save(root / "round-00" / "bias.npz")
    r1 = run(c, 1, root / "round-01", bias_path=root / "round-00" / "bias.npz")
    from cgflow.sampling.metadynamics import run_unbiased

    unbiased = run_unbiased(c, root / "peers" / "unbiased")
    run_metadynamics(c, root / "peers" / "metadynamics")
    return c, root, [r0, r1], unbiased


def test_unbiased_peer_spends_the_budget_and_its_curve_converges(short_campaign):
    c, _, _, path = short_campaign
    df, prov = pd.read_parquet(path), read_provenance(path)
    B = 2 * 32 * (10000 + 500)
    assert prov["fg_steps"] == B and prov["round"] == 1000 and prov["bias"] is None
    assert df.step.max() == 2 * 10000 + 500 and df.step.min() == 50
    curve = curve_unbiased(c, path, _exact(c))
    print("unbiased curve:\n", curve)
    assert list(curve.columns) == ["method", "fg_steps", "rmse_kT", "coverage"]
    np.testing.assert_array_equal(curve.fg_steps, 32 * budget_schedule(c))
    # the last point is the FES of every frame
    fes = histogram_fes(df[["x"]].to_numpy(), cv_edges(c), c.sampling.kT, n_bootstrap=2)
    assert curve.rmse_kT.iloc[-1] == pytest.approx(compare_to_reference(fes, _exact(c), c.sampling.kT, 4.0)["rmse_kT"])
    # the first budget point is 2625 steps per walker, 500 of them equilibration
    assert len(df[df.step <= 2125]) == 32 * (2125 // 50)
    assert curve.rmse_kT.iloc[-1] < 0.5 < curve.rmse_kT.iloc[0] and curve.coverage.iloc[-1] == 1.0


def test_rounds_curve_reweights_the_biased_round(short_campaign):
    c, _, samples, _ = short_campaign
    curve = curve_rounds(c, samples, _exact(c))
    print("cgflow curve:\n", curve)
    np.testing.assert_array_equal(curve.fg_steps, 32 * budget_schedule(c))
    # the end of round 0 is a budget point, scored on round 0 alone
    r0 = pd.read_parquet(samples[0])
    fes = histogram_fes(r0[["x"]].to_numpy(), cv_edges(c), c.sampling.kT, n_bootstrap=2)
    expected = compare_to_reference(fes, _exact(c), c.sampling.kT, 4.0)["rmse_kT"]
    assert curve.rmse_kT.iloc[3] == pytest.approx(expected)
    # at the end: both rounds, reweighted by MBAR over their biases (from the provenance)
    both = pd.concat([r0, pd.read_parquet(samples[1])])
    cv, kT = both[["x"]].to_numpy(), c.sampling.kT
    w = mbar_weights(cv, (np.arange(len(both)) >= len(r0)).astype(int), [None, BiasGrid.load(
        read_provenance(samples[1])["bias"])], kT).weights
    fes = histogram_fes(cv, cv_edges(c), kT, weights=w, n_bootstrap=2)
    assert curve.rmse_kT.iloc[-1] == pytest.approx(compare_to_reference(fes, _exact(c), kT, 4.0)["rmse_kT"])
    # which is better than round 0 alone, and than a plain histogram of both rounds
    naive = histogram_fes(cv, cv_edges(c), kT, n_bootstrap=2)
    naive_rmse = compare_to_reference(naive, _exact(c), kT, 4.0)["rmse_kT"]
    print("round 0 alone", expected, "both rounds, no reweighting", naive_rmse)
    assert curve.rmse_kT.iloc[-1] < min(0.3, expected) and naive_rmse > 0.4
    # without round 1's samples, the curve stops at the end of round 0
    assert len(curve_rounds(c, samples[:1], _exact(c))) == c.analysis.budget_points


def test_rounds_curve_leaves_a_part_round_unscored_when_its_reweighting_does_not_converge(short_campaign, monkeypatch):
    """A budget point inside a round whose reweighting does not converge is NaN and the curve goes
    on (a long campaign's analysis must not die on a diagnostic point); at a round's end the
    weights are the round's own, and a failure there still stops the analysis."""
    from cgflow.analysis import reweight

    c, _, samples, _ = short_campaign
    good = curve_rounds(c, samples, _exact(c))
    real = reweight.campaign_weights

    def flaky(campaign, frames, biases):  # round 1 cut short does not converge
        if (frames["round"] == 1).any() and frames.loc[frames["round"] == 1, "step"].max() < c.sampling.steps:
            raise reweight.NotConverged("TRAM did not converge (test)")
        return real(campaign, frames, biases)

    monkeypatch.setattr(reweight, "campaign_weights", flaky)
    curve = curve_rounds(c, samples, _exact(c))
    inside = (curve.fg_steps > good.fg_steps.iloc[3]) & (curve.fg_steps < good.fg_steps.iloc[-1])
    assert inside.sum() > 0 and curve.rmse_kT[inside].isna().all()
    np.testing.assert_allclose(curve.rmse_kT[~inside], good.rmse_kT[~inside])
    np.testing.assert_allclose(curve.coverage, good.coverage)
    # an unscored point breaks a run below the target: staying below counts from the round's end
    assert steps_to_stay(curve, 0.5) == curve.fg_steps.iloc[-1] and steps_to_target(curve, 0.5) == steps_to_target(good, 0.5)

    def never(campaign, frames, biases):
        raise reweight.NotConverged("TRAM did not converge (test)")

    monkeypatch.setattr(reweight, "campaign_weights", never)
    with pytest.raises(reweight.NotConverged):
        curve_rounds(c, samples, _exact(c))


def test_rounds_curve_takes_the_round_ends_from_the_reweight_rule(short_campaign, tmp_path, monkeypatch):
    """At a round's end the curve reads that round's weights.parquet (the same frames and estimator)
    and refits only the part-rounds; the curve is the one refitted throughout, and a weights file
    of other samples is refused."""
    from cgflow.analysis import reweight
    from cgflow.analysis.reweight import write_weights

    c, root, samples, _ = short_campaign
    weights = [tmp_path / "w0.parquet", tmp_path / "w1.parquet"]
    write_weights(c, samples[:1], [None], weights[0])
    write_weights(c, samples, [None, root / "round-00" / "bias.npz"], weights[1])
    refitted = curve_rounds(c, samples, _exact(c))
    fits, real = [], reweight.campaign_weights

    def counted(campaign, frames, biases):
        fits.append(frames["round"].max())
        return real(campaign, frames, biases)

    monkeypatch.setattr(reweight, "campaign_weights", counted)
    curve = curve_rounds(c, samples, _exact(c), weights)
    np.testing.assert_allclose(curve.rmse_kT, refitted.rmse_kT, rtol=1e-9)
    # four budget points per round (analysis.budget_points), two of them round ends
    assert len(fits) == len(curve) - 2 == 6
    with pytest.raises(ValueError, match="belongs to other samples"):
        curve_rounds(c, samples, _exact(c), weights[::-1])


def test_reweight_remembers_the_levelled_cells_of_the_round_before(short_campaign, tmp_path):
    """Round k's weights.parquet carries the cells the guidance levels (held outside TRAM's set
    now, or within guidance.level_memory rounds, as the previous round's file says), and refuses a
    previous file of another config."""
    from cgflow.analysis.reweight import write_weights
    from cgflow.io import InputError, write_parquet

    c, root, samples, _ = short_campaign
    biases = [None, root / "round-00" / "bias.npz"]
    for memory, kept in [(1, {"7": 0}), (0, {})]:
        cm = _campaign({"walkers": 32, "steps": 10000, "equilibration": 500},
                       {"rounds": 1, "estimator": "mbar", "level_memory": memory})
        w0, w1 = tmp_path / f"w0-{memory}.parquet", tmp_path / f"w1-{memory}.parquet"
        write_weights(cm, samples[:1], [None], w0)
        assert read_provenance(w0)["levelled_cells"] == {}  # MBAR: every frame connected, nothing held
        # as if round 0 had held a basin outside TRAM's set in cell 7
        write_parquet(pd.read_parquet(w0), w0, {**read_provenance(w0), "levelled_cells": {"7": 0}})
        write_weights(cm, samples, biases, w1, previous=w0)
        assert read_provenance(w1)["levelled_cells"] == kept
    with pytest.raises(InputError, match="another campaign"):  # c: level_memory 0, the file's: 1
        write_weights(c, samples, biases, tmp_path / "w1.parquet", previous=tmp_path / "w0-1.parquet")


def test_guidance_levels_the_cells_remembered_from_earlier_rounds(short_campaign, tmp_path):
    """The CG model and the bias learn from weights that level the cells a weights file remembers
    from earlier rounds (here the barrier top, cell 16 of 32, lifted to the deepest cell's mass),
    while a cell held in the file's own round is levelled by its outside frames alone: with every
    frame connected (MBAR), none."""
    from cgflow.analysis.campaign import read_samples
    from cgflow.analysis.reweight import attach_weights, write_weights
    from cgflow.analysis.tram import markov_states
    from cgflow.guidance.campaign import learning_frames
    from cgflow.io import write_parquet

    _, root, samples, _ = short_campaign
    cm = _campaign({"walkers": 32, "steps": 10000, "equilibration": 500},
                   {"rounds": 1, "estimator": "mbar", "level_memory": 2})
    w1 = tmp_path / "w1.parquet"
    write_weights(cm, samples, [None, root / "round-00" / "bias.npz"], w1)
    plain = attach_weights(cm, read_samples(cm, samples)[0], w1)
    cell = markov_states(plain[["x"]].to_numpy(), (-2.0,), (2.0,), SUPPORT_BINS)
    top = cell == 16
    assert top.sum() >= cm.guidance.min_frames
    for last, lifted in [(0, True), (1, False)]:
        write_parquet(pd.read_parquet(w1), w1, {**read_provenance(w1), "levelled_cells": {"16": last}})
        ratio = learning_frames(cm, samples, w1)["weight"].to_numpy() / plain["weight"].to_numpy()
        assert np.allclose(ratio[~top], ratio[~top][0])
        if lifted:
            mass = np.bincount(cell, weights=ratio * plain["weight"].to_numpy(), minlength=SUPPORT_BINS)
            assert mass[16] == pytest.approx(np.delete(mass, 16).max())
            assert ratio[top][0] / ratio[~top][0] > 10
        else:
            np.testing.assert_allclose(ratio, 1.0)


def test_write_convergence_compares_all_methods(short_campaign, tmp_path):
    from cgflow.analysis.campaign import write_reference

    c, root, samples, _ = short_campaign
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(c.resolved))
    write_reference(c, tmp_path / "reference.csv")
    peers = [f"unbiased={root / 'peers' / 'unbiased'}", f"metadynamics={root / 'peers' / 'metadynamics'}"]
    args = SimpleNamespace(config=str(config), samples=[str(p) for p in samples], weights=None, peer=peers,
                           reference=str(tmp_path / "reference.csv"), out=str(tmp_path / "convergence.csv"),
                           plot=str(tmp_path / "convergence.png"), summary_json=str(tmp_path / "convergence.json"))
    cli_convergence(args)
    table = pd.read_csv(tmp_path / "convergence.csv")
    summary = json.loads((tmp_path / "convergence.json").read_text())
    print(json.dumps(summary))
    assert list(table.method.unique()) == ["cgflow", "unbiased", "metadynamics"]
    for method, curve in table.groupby("method"):
        np.testing.assert_array_equal(curve.fg_steps, 32 * budget_schedule(c))
        assert summary[method]["steps_to_target"] == steps_to_target(curve, 0.5)
        assert summary[method]["steps_to_stay"] == steps_to_stay(curve, 0.5)
        assert [b for b, _ in summary[method]["curve"]] == curve.fg_steps.tolist()
    assert summary["target_kT"] == 0.5
    assert (tmp_path / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    again = write_convergence(c, [], {"metadynamics": root / "peers" / "metadynamics" / "fes_snapshots.npz"},
                              tmp_path / "reference.csv", tmp_path / "m.csv", tmp_path / "m.png")
    assert set(again) == {"metadynamics", "target_kT"} and again["metadynamics"] == summary["metadynamics"]
    # round 1 sampled under the well-tempered bias of the exact PMF itself
    [[round_index, error]] = summary["cgflow"]["bias_error_kT"]
    assert round_index == 1 and error < 0.05
    assert summary["cgflow"]["on_target_share"] == on_target_shares(c, samples, _exact(c))


def test_on_target_share_is_the_equilibrium_mass_where_the_fes_is_scored(short_campaign):
    """Each round's share of frames in the bins below the cutoff (4 kT, |x| < 1.51) against the
    mass its equilibrium puts there: round 0 unbiased, almost all; round 1 under the well-tempered
    bias, which flattens the walls too and lets the walkers out to |x| ~ 2. The masses by
    quadrature on 100 sub-bins per bin: within a wall bin the potential and the bias change by
    several kT, so the bias at the bin centre overstates the biased wall mass by ~4 %."""
    c, _, samples, _ = short_campaign
    kT, edges = c.sampling.kT, cv_edges(c)[0]
    F = _exact(c)
    region = F - np.nanmin(F) < 4.0 * kT
    fine = np.linspace(edges[0], edges[-1], 100 * (len(edges) - 1) + 1)
    F_fine = c.system.build().reference_fes([fine], c.sampling.temperature)
    centres = 0.5 * (fine[1:] + fine[:-1])
    bias = BiasGrid.load(read_provenance(samples[1])["bias"])(centres[:, None])
    expected = []
    for V in (0.0, bias):
        p = np.exp(-(F_fine + V - np.nanmin(F_fine + V)) / kT)
        expected.append(p[np.repeat(region, 100)].sum() / p.sum())
    shares = on_target_shares(c, samples, _exact(c))
    print("on-target shares", shares, "expected", expected)
    assert [k for k, _ in shares] == [0, 1]
    assert shares[0][1] == pytest.approx(expected[0], abs=0.01) and expected[0] > 0.99
    assert shares[1][1] == pytest.approx(expected[1], abs=0.02) and expected[1] < 0.9


def test_bias_error_is_the_rms_distance_from_the_well_tempered_bias():
    """On the 6 kJ/mol double well, scored where F < 4 kT (|x| < 1.51): the well-tempered bias
    plus any constant has none; plus kT x, the RMS of x there, 1.51 / sqrt(3); half the
    fill, (1 - 1/gamma) F / 2 left over, whose RMS the test takes from the exact PMF."""
    c = _campaign({"walkers": 1, "steps": 100}, {"rounds": 1, "estimator": "mbar"})
    kT, gamma = c.sampling.kT, c.guidance.gamma
    x = np.linspace(-2.0, 2.0, 401)
    U = 6 * (x**2 - 1) ** 2
    grid = lambda values: BiasGrid(("x",), (-2.0,), (2.0,), (False,), values)  # noqa: E731
    F_ref = _exact(c)
    # 0.02 kT: the reference is the free energy of each bin, the bias its value at the centre
    assert bias_error_kT(c, grid(-(1 - 1 / gamma) * U + 3.0), F_ref) < 0.03
    assert bias_error_kT(c, grid(-(1 - 1 / gamma) * U + kT * x), F_ref) == pytest.approx(1.51 / np.sqrt(3), abs=0.03)
    F = F_ref - np.nanmin(F_ref)
    half = (1 - 1 / gamma) * F[F < 4 * kT] / 2
    assert bias_error_kT(c, grid(-(1 - 1 / gamma) * U / 2), F_ref) == pytest.approx(np.std(half) / kT, rel=0.02)


def test_alanine_metadynamics_biases_both_dihedrals(tmp_path):
    analysis = {"reference": "none", "bins": 24, "metadynamics": {"frequency": 100, "grid": 64}}
    c = _campaign({"walkers": 2, "steps": 1000}, analysis=analysis, system={"type": "alanine_dipeptide"})
    df = pd.read_parquet(run_metadynamics(c, tmp_path))
    snap = read_snapshots(tmp_path / "fes_snapshots.npz")
    assert snap["F"].shape == (4, 24, 24) and snap["hills_cv"].shape == (20, 2)
    assert np.isfinite(df.potential_energy_kJmol).all() and (df.bias_energy_kJmol[df.step > 100] > 0).all()
    np.testing.assert_allclose(df[["phi", "psi"]].to_numpy()[df.step == 1000],
                               snap["hills_cv"][snap["hills_step"] == 1000], atol=1e-6)
