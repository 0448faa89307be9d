"""The hills layer within a round (cgflow.sampling.hills): well-tempered Gaussians on top of the
CG bias, applied by OpenMM as they are deposited, resumed exactly after a kill, and reweighted
with one thermodynamic state per deposition interval to the exact PMF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cgflow.config import ConfigError
from cgflow.guidance.bias import FORCE_GROUP, BiasGrid
from cgflow.sampling.engine import MDSettings, Replica
from cgflow.sampling.hills import HillSettings, Hills, RoundStates
from tests.conftest import Killed

KT = 2.494


def _group_energy(context) -> float:
    import openmm.unit as u

    return context.getState(getEnergy=True, groups={FORCE_GROUP}).getPotentialEnergy().value_in_unit(
        u.kilojoule_per_mole)


def test_a_hill_is_tempered_by_the_whole_bias_and_wraps_periodic_cvs():
    base = BiasGrid.zeros(("phi", "psi"), (-np.pi, -np.pi), (np.pi, np.pi), (True, True), 61)
    lifted = BiasGrid(base.names, base.lower, base.upper, base.periodic, np.full(base.values.shape, 10.0))
    settings = HillSettings(height=3.0, width=(0.3, 0.4), interval=100, gamma=6.0, kT=KT)
    flat, high = Hills(base, settings), Hills(lifted, settings)
    centre = np.array([[np.pi - 0.05, 0.5]])  # beside the periodic edge of phi
    flat.deposit(centre)
    high.deposit(centre)
    peak = flat.values.max()
    assert peak == pytest.approx(3.0, rel=0.02)  # the grid's nearest point is within 0.05 rad
    assert high.values.max() / peak == pytest.approx(np.exp(-10.0 / (5 * KT)), rel=1e-9)
    # the Gaussian continues across phi = +-pi; the grid stays periodic (BiasGrid checks it)
    H = flat.total()
    at = lambda phi, psi: float(H(np.array([[phi, psi]]))[0])  # noqa: E731
    assert at(-np.pi + 0.05, 0.5) == pytest.approx(3.0 * np.exp(-0.5 * (0.1 / 0.3) ** 2), rel=0.02)
    assert at(-np.pi + 0.05, 0.5 + 0.4) == pytest.approx(at(-np.pi + 0.05, 0.5) * np.exp(-0.5), rel=0.02)
    # a second hill at the same place is tempered by the first
    flat.deposit(centre)
    second = flat.history[2] - flat.history[1]
    assert second.max() / peak == pytest.approx(np.exp(-at(np.pi - 0.05, 0.5) / (5 * KT)), rel=0.02)


def test_openmm_applies_the_grid_set_during_a_run(tmp_path):
    from cgflow.systems.alanine import AlanineDipeptide
    from cgflow.systems.toy import ToySystem, CV

    settings = MDSettings(300.0, 0.002, 1.0, 100, 0, 10, 100)
    rng = np.random.default_rng(3)
    toy = ToySystem("x^2 + y^2", (CV("x", "x"),), {"x": (-2, 2), "y": (-2, 2)})
    ala = AlanineDipeptide("vacuum")
    cases = [(toy, 5, toy.initial_positions(5) + rng.uniform(-1, 1, size=(5, 3)),
              BiasGrid.zeros(("x",), (-2.0,), (2.0,), (False,), 41)),
             (ala, 1, ala.initial_positions(),
              BiasGrid.zeros(("phi", "psi"), (-np.pi, -np.pi), (np.pi, np.pi), (True, True), 31))]
    for k, (system, n, start, zero) in enumerate(cases):
        replica = Replica(system, list(range(n)), settings, "Reference", {}, 1, tmp_path / str(k), zero, start)
        replica.advance(30)
        assert _group_energy(replica.context) == 0.0
        hills = Hills(zero, HillSettings(4.0, (0.5,) * len(zero.names), 10, 8.0, KT))
        hills.deposit(replica.cv())
        replica.set_bias(hills.total())
        expected = hills.total()(replica.cv()).sum()
        assert expected > 0.5
        assert _group_energy(replica.context) == pytest.approx(expected, rel=1e-8)
        replica.advance(40)  # the frames saved from now on record the new bias
        assert replica.buffer["bias"][-1].sum() == pytest.approx(_group_energy(replica.context), rel=1e-8)


HILLS_RUN = {"walkers": 8, "steps": 4000, "report_interval": 50, "checkpoint_interval": 1000,
             "equilibration": 100, "platform": "Reference"}


def test_a_round_with_hills_rolled_back_after_a_kill_gives_the_uninterrupted_output(campaign, tmp_path):
    from cgflow.sampling.round import sample_round, zero_bias

    c = campaign(system={"type": "toy", "potential": "double_well_2d"}, sampling=HILLS_RUN,
                 guidance={"hills": {"height": 2.0, "interval": 600}})
    layer = lambda: Hills(zero_bias(c), HillSettings.from_campaign(c))  # noqa: E731
    whole = layer()
    frames, _ = sample_round(c, 0, tmp_path, hills=whole)
    work = tmp_path / ".work" / "rank-000-of-001"
    # killed after the replica wrote its chunk at step 3000 but before H was checkpointed there:
    # the restart must roll the replica back to step 2000, where both were saved
    (work / "hills-0000003000.npz").unlink()
    (work / "hills-0000004100.npz").unlink()
    (work / "replica-00000" / "chunk-0000004100.npz").unlink()
    again = layer()
    resumed, _ = sample_round(c, 0, tmp_path, hills=again)
    for a, b in zip(frames, resumed):
        np.testing.assert_array_equal(a.step, b.step)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.bias, b.bias)
    assert len(again.history) == len(whole.history) == 7  # deposits at 600, ..., 3600 of 4100 steps
    np.testing.assert_array_equal(again.values, whole.values)
    assert whole.values.max() > 10.0


class _OtherRank:
    """The collectives of a run whose other rank has checkpointed up to step ``at``."""

    def __init__(self, at: int):
        self.at = at

    def allreduce(self, value, op=None):
        return min(value, self.at)

    def allgather(self, value):
        return [value]


def _kill_before_chunk(monkeypatch, step: int) -> None:
    """Every replica dies (raises Killed) just before it would save its chunk at ``step``."""
    from cgflow.sampling import engine

    save_chunk = engine.Replica.save_chunk

    def killed(self):
        if self.step == step:
            raise Killed
        return save_chunk(self)

    monkeypatch.setattr(engine.Replica, "save_chunk", killed)


def test_a_rank_rolled_back_to_another_ranks_checkpoint_keeps_no_later_hills(campaign, tmp_path, monkeypatch):
    """Killed after its hills checkpoint at 3000 while the other rank was at 2000, this rank
    rolls back to 2000 and is killed again before its new chunk at 3000; the other rank has
    meanwhile reached 3000. A hills file at 3000 left from the first run would now be the
    common checkpoint, with no replica chunk to match: the run must finish as an uninterrupted one."""
    from cgflow.sampling import hills
    from cgflow.sampling.round import sample_round, zero_bias

    c = campaign(system={"type": "toy", "potential": "double_well_2d"}, sampling={**HILLS_RUN, "walkers": 4},
                 guidance={"hills": {"height": 2.0, "interval": 600}})
    layer = lambda: Hills(zero_bias(c), HillSettings.from_campaign(c))  # noqa: E731
    whole, _ = sample_round(c, 0, tmp_path / "whole", hills=layer(), comm=_OtherRank(10**9))

    save = hills.Hills.save

    def save_then_die_at_3000(self, path, equilibration):
        save(self, path, equilibration)
        if path.name == "hills-0000003000.npz":
            raise Killed

    monkeypatch.setattr(hills.Hills, "save", save_then_die_at_3000)
    with pytest.raises(Killed):
        sample_round(c, 0, tmp_path, hills=layer(), comm=_OtherRank(10**9))
    monkeypatch.setattr(hills.Hills, "save", save)
    _kill_before_chunk(monkeypatch, 3000)
    with pytest.raises(Killed):
        sample_round(c, 0, tmp_path, hills=layer(), comm=_OtherRank(2000))
    monkeypatch.undo()
    resumed, _ = sample_round(c, 0, tmp_path, hills=layer(), comm=_OtherRank(3000))
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.bias, b.bias)


def test_a_hills_round_killed_then_run_on_another_bias_grid_starts_afresh(campaign, tmp_path, monkeypatch):
    """Round 0's hills live on a zero grid of guidance.bias_grid points, which the sampling
    settings do not hold: the work folder of a run on another grid must not be resumed."""
    from cgflow.sampling.round import sample_round, zero_bias

    def config(points):
        return campaign(system={"type": "toy", "potential": "double_well_2d"}, sampling={**HILLS_RUN, "walkers": 2},
                        guidance={"hills": {"height": 2.0, "interval": 600}, "bias_grid": points})

    def layer(c):
        return Hills(zero_bias(c), HillSettings.from_campaign(c))

    _kill_before_chunk(monkeypatch, 3000)
    with pytest.raises(Killed):
        sample_round(config(101), 0, tmp_path, hills=layer(config(101)))
    monkeypatch.undo()
    fresh, _ = sample_round(config(61), 0, tmp_path / "fresh", hills=layer(config(61)))
    resumed, _ = sample_round(config(61), 0, tmp_path, hills=layer(config(61)))
    for a, b in zip(fresh, resumed):
        np.testing.assert_array_equal(a.positions, b.positions)


def test_hills_need_a_tram_transition_per_interval(campaign):
    # frames every 100 steps, TRAM's lag 1 ps = 500 steps
    with pytest.raises(ConfigError, match="guidance.hills.interval: 599 steps"):
        campaign(guidance={"hills": {"height": 1.0, "interval": 599}})
    assert campaign(guidance={"hills": {"height": 1.0, "interval": 600}}).guidance.hills["interval"] == 600
    assert campaign(guidance={"hills": {"height": 1.0, "interval": 100}, "estimator": "mbar"})
    assert HillSettings.from_campaign(campaign()) is None  # off by default


def test_a_round_with_hills_reweighted_per_interval_gives_the_exact_pmf(campaign, tmp_path):
    """The 2-D double well (10 kT barrier along x), all walkers started in the left well: in one
    round the hills carry them over, and with one state per deposition interval the frames give
    the exact PMF by TRAM. (MBAR over the same states gives 0.37 kT: the bias moves faster
    than the walkers relax.)"""
    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import compare_to_reference, histogram_fes
    from cgflow.analysis.reweight import campaign_weights
    from cgflow.sampling.round import run

    c = campaign(system={"type": "toy", "potential": "double_well_2d", "start": {"x": -1.0, "y": 0.0}},
                 sampling={"walkers": 32, "steps": 24000, "report_interval": 50, "equilibration": 500},
                 guidance={"hills": {"height": 1.5, "interval": 1000}},
                 analysis={"bins": 40})
    df = pd.read_parquet(run(c, 0, tmp_path, hills=True)).assign(round=0)
    states = RoundStates.load(tmp_path / "hills.npz")
    assert len(states.grids) == 25 and (df.x > 0.8).mean() > 0.2  # crossed
    edges = cv_edges(c)
    exact = c.system.build().reference_fes(edges, c.sampling.temperature)

    def rmse(weights):
        fes = histogram_fes(df[["x"]].to_numpy(), edges, c.sampling.kT, weights=weights, n_bootstrap=2)
        return compare_to_reference(fes, exact, c.sampling.kT, 6.0)

    score = rmse(campaign_weights(c, df, [states]).weights)
    assert score["coverage"] == 1.0
    assert score["rmse_kT"] < 0.25, score


def test_a_hills_round_on_an_initial_bias_of_its_own_grid_is_guided_on_the_campaigns_grid(campaign, tmp_path):
    """Round 0's hills grow on guidance.initial_bias, here on 50 points between bin centres (as
    a reference's well-tempered bias is written), while the guidance writes guidance.bias_grid
    points over the box: the hills must be read at those points, not added value by value."""
    from cgflow.analysis.reweight import write_weights
    from cgflow.guidance.campaign import guide_round
    from cgflow.sampling.round import run
    from cgflow.training.campaign import train_round

    centres = 0.5 * (np.linspace(-2, 2, 51)[1:] + np.linspace(-2, 2, 51)[:-1])
    initial = BiasGrid(("x",), (centres[0],), (centres[-1],), (False,), np.clip(10 - 4.8 * (centres**2 - 1) ** 2, 0, 10))
    initial.save(tmp_path / "initial.npz")
    c = campaign(sampling={"walkers": 8, "steps": 4000, "report_interval": 50, "platform": "Reference",
                           "pin_cpu": False},
                 guidance={"rounds": 1, "initial_bias": str(tmp_path / "initial.npz"), "estimator": "mbar",
                           "hills": {"height": 1.0, "interval": 500}, "min_frames": 5, "train_steps": 50})
    r0 = tmp_path / "round-00"
    samples = run(c, 0, r0, bias_path=tmp_path / "initial.npz", hills=True)
    write_weights(c, [samples], [tmp_path / "initial.npz"], r0 / "weights.parquet")
    train_round(c, 0, [samples], r0 / "weights.parquet", r0 / "cg.pt", r0 / "train.json")
    guide_round(c, 0, r0 / "cg.pt", [samples], r0 / "weights.parquet", r0 / "bias.npz", r0 / "starts.npz",
                r0 / "guide.json")
    bias = BiasGrid.load(r0 / "bias.npz")
    assert bias.values.shape == (c.guidance.bias_grid,) and np.isfinite(bias.values).all()

    # what the hills add: the bias the round ended with, (1 - sigma) of it, all of it where the
    # CG ensemble is trusted nowhere near (sigma = 0)
    (r0 / "hills.npz").rename(tmp_path / "hills.npz")
    guide_round(c, 0, r0 / "cg.pt", [samples], r0 / "weights.parquet", tmp_path / "bias-cg.npz",
                tmp_path / "starts-cg.npz", tmp_path / "guide-cg.json")
    ended = RoundStates.load(tmp_path / "hills.npz").grids[-1](bias.points)
    kept = bias.values - BiasGrid.load(tmp_path / "bias-cg.npz").values
    assert (kept >= -1e-9).all() and (kept <= ended + 1e-9).all()
    assert np.isclose(kept, ended, atol=1e-6)[ended > 0.5].any()
