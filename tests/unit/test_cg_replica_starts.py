"""CG replicas start from the FG frames' unbiased ensemble, not from the biased frames as they lie.

A bead in a symmetric double well whose 40 kT barrier no replica crosses in the run: by symmetry
each well holds exactly half the probability, and the CG MD can only reproduce that if its
starts do. The FG data over-sample the right-hand well 9:1, as biased sampling rounds do, and
carry the weights that undo it; started uniformly from the frames, 90 % of the CG frames would
sit on the right. The starts are a systematic resample, so each well gets half the replicas
within one, where independent draws would scatter by 10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.sampling.cg_forces import BeadForces
from cgflow.training.bead_campaign import KB, CGSimulator, cg_md

T = 300.0
BARRIER = 40 * KB * T  # kJ/mol
REPLICAS = 400


class DoubleWell(torch.nn.Module):
    """U = h (x^2 - 1)^2 + (k/2)(y^2 + z^2), wells at x = -1 and +1 nm."""

    def forward(self, r):
        x, yz = r[..., 0, 0], r[..., 0, 1:]
        return BARRIER * (x**2 - 1) ** 2 + 0.5 * 500.0 * (yz**2).sum(-1)


def _biased_data():
    rng = np.random.default_rng(0)
    side = np.r_[-np.ones(10), np.ones(90)]
    x = np.zeros((100, 1, 3))
    x[:, 0, 0] = side + rng.normal(0, 0.03, 100)
    weights = np.where(side < 0, 0.5 / 10, 0.5 / 90)
    return {"x": x, "masses": np.array([12.0]), "temperature": T, "weights": weights}


def _right_share(frames) -> float:
    return float((np.asarray(frames)[..., 0, 0] > 0).mean())


def test_production_cg_md_starts_from_the_weighted_frames():
    data = _biased_data()
    traj, _ = cg_md(DoubleWell(), data, 0.002, 1000, REPLICAS, 100, friction=5.0, seed=1, precision="float64",
                    compile=False, device="cpu")
    per_replica = np.asarray(traj.positions[..., 0, 0] > 0)
    assert (per_replica == per_replica[:1]).all(), "no replica may cross the 40 kT barrier in 2 ps"
    assert _right_share(traj.positions) == pytest.approx(0.5, abs=0.1)  # uniform starts: 0.9
    assert abs(per_replica[0].sum() - REPLICAS / 2) <= 1


def test_relative_entropy_replicas_start_from_the_weighted_frames():
    data = _biased_data()
    model = DoubleWell()
    simulate = CGSimulator(BeadForces(model, "float64", False, "cpu"), data["x"], data["masses"], T, 0.002, 200,
                           REPLICAS, report_interval=100, friction=5.0, seed=1, weights=data["weights"])
    assert abs((simulate.x[:, 0, 0] > 0).sum().item() - REPLICAS / 2) <= 1
    assert _right_share(simulate(model)) == pytest.approx(0.5, abs=0.1)
