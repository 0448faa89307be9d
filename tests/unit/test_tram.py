"""TRAM reweighting of rounds that are not in equilibrium under their bias (cgflow.analysis.tram)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cgflow.analysis.reweight import mbar_weights
from cgflow.analysis.tram import markov_states, tram_weights

KT = 2.494
BARRIER = 8 * KT
GAMMA = 8


def potential(x):
    return BARRIER * (x**2 - 1) ** 2


def force(x):
    return -4 * BARRIER * x * (x**2 - 1)


def brownian(x0, scale, steps, rng, dt=1e-4, every=50):
    """Overdamped Langevin (D = 1) on scale * U; frames (n_frames, walkers)."""
    x, frames = x0.copy(), []
    for i in range(1, steps + 1):
        x = x + dt * scale * force(x) / KT + np.sqrt(2 * dt) * rng.standard_normal(len(x))
        if i % every == 0:
            frames.append(x.copy())
    return np.array(frames)


class Bias:
    def __init__(self, f):
        self.f = f

    def __call__(self, cv):
        return self.f(cv[:, 0])


def two_rounds(seed, walkers=64):
    """Round 0: unbiased, every walker in the right well (8 kT barrier: none crosses).
    Round 1: the well-tempered bias -(1-1/gamma) U, walkers again start in the right well and
    the round ends long before the two wells equilibrate: a transient."""
    rng = np.random.default_rng(seed)
    rounds = [brownian(np.full(walkers, 1.0), 1.0, 20000, rng), brownian(np.full(walkers, 1.0), 1 / GAMMA, 20000, rng)]
    frames = pd.concat(
        [pd.DataFrame({"round": k, "walker": w, "step": np.arange(1, len(r) + 1), "x": r[:, w]})
         for k, r in enumerate(rounds) for w in range(walkers)],
        ignore_index=True,
    )
    return frames, [None, Bias(lambda x: -(1 - 1 / GAMMA) * potential(x))]


def rmse_kT(frames, weights):
    edges = np.linspace(-1.6, 1.6, 33)
    centres = 0.5 * (edges[1:] + edges[:-1])
    exact = potential(centres)
    hist, _ = np.histogram(frames["x"], bins=edges, weights=weights)
    with np.errstate(divide="ignore"):
        F = -KT * np.log(hist)
    region = exact - exact.min() < 5 * KT
    diff = (F - exact)[region]
    assert np.isfinite(diff).all(), "a low-free-energy bin got no weight"
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)) / KT)


@pytest.mark.parametrize("seed", [0, 1])
def test_tram_is_right_where_mbar_is_not(seed):
    frames, biases = two_rounds(seed)
    right_well_share = (frames.loc[frames["round"] == 1, "x"] > 0).mean()
    assert right_well_share > 0.6  # truly out of equilibrium: it would be 0.5 at equilibrium
    tram = tram_weights(frames, ["x"], biases, KT, [-1.6], [1.6], 32)
    mbar = mbar_weights(frames[["x"]].to_numpy(), frames["round"].to_numpy(), biases, KT)
    assert rmse_kT(frames, tram.weights) < 0.35
    assert rmse_kT(frames, mbar.weights) > 0.8
    assert tram.weights.sum() == pytest.approx(1.0)
    assert tram.f_k[0] == 0.0 and len(tram.ess_per_round) == 2


def test_tram_equals_mbar_in_equilibrium():
    rng = np.random.default_rng(5)
    walkers = 64
    # both rounds start from their own equilibrium: walkers spread over both wells
    starts = np.where(rng.random(walkers) < 0.5, -1.0, 1.0)
    rounds = [brownian(starts, 1 / GAMMA, 8000, rng), brownian(starts, 1.0, 8000, rng)]
    frames = pd.concat(
        [pd.DataFrame({"round": k, "walker": w, "step": np.arange(1, len(r) + 1), "x": r[:, w]})
         for k, r in enumerate(rounds) for w in range(walkers)],
        ignore_index=True,
    )
    biases = [Bias(lambda x: -(1 - 1 / GAMMA) * potential(x)), None]
    tram = tram_weights(frames, ["x"], biases, KT, [-1.6], [1.6], 32)
    mbar = mbar_weights(frames[["x"]].to_numpy(), frames["round"].to_numpy(), biases, KT)
    assert abs(tram.f_k[1] - mbar.f_k[1]) < 0.1
    assert rmse_kT(frames, tram.weights) < 0.3 and rmse_kT(frames, mbar.weights) < 0.3


def test_markov_states_cover_the_grid_in_c_order():
    cv = np.array([[-1.0, -1.0], [0.99, -1.0], [-1.0, 0.99], [5.0, 5.0]])
    assert markov_states(cv, [-1, -1], [1, 1], 4).tolist() == [0, 12, 3, 15]
