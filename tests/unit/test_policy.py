"""The bias policy (cgflow.guidance): the VES functional's minimiser is the well-tempered bias,
the trust switches, the data support, and where the next round's walkers start."""

from __future__ import annotations

import numpy as np
import pytest

from cgflow.guidance.policy import Basis, applied_bias, components, data_support, fit_policy, frontier, trust
from cgflow.guidance.seeding import choose_starts, frontier_scores

KT = 2.494


def free_energy(x):
    return 3 * KT * (x**2 - 1) ** 2 + 0.5 * KT * x


@pytest.mark.parametrize("gamma", [4.0, 8.0])
def test_ves_minimiser_is_the_well_tempered_bias(gamma):
    """Exact unbiased samples of F and the target exp(-F/(gamma kT)) where they are (the trust
    region): the fitted bias is -(1 - 1/gamma) F up to a constant, from the samples alone."""
    grid = np.linspace(-2, 2, 2001)
    p = np.exp(-free_energy(grid) / KT)
    rng = np.random.default_rng(0)
    cv = rng.choice(grid, size=40000, p=p / p.sum())[:, None] + rng.uniform(-1e-3, 1e-3, (40000, 1))
    basis = Basis((-2.0,), (2.0,), (False,), 10)
    points = grid[:, None]
    sampled = free_energy(grid) - free_energy(grid).min() < 5 * KT
    trusted = (free_energy(cv[:, 0]) - free_energy(grid).min() < 5 * KT).astype(float)
    policy = fit_policy(basis, cv, np.full(len(cv), 1 / len(cv)), trusted, points,
                        -free_energy(grid) / (gamma * KT), sampled.astype(float), KT, steps=500)
    V = basis(points) @ policy.coefficients
    expected = -(1 - 1 / gamma) * free_energy(grid)
    diff = (V - expected)[sampled]
    assert np.sqrt(np.mean((diff - diff.mean()) ** 2)) / KT < 0.15
    assert 0 < policy.biased_ess <= len(cv)


def test_trust_is_one_below_e0_zero_above_e1_and_smooth_between():
    eps = np.array([0.0, 1.0, 1.5, 2.75, 4.0, 9.0])
    sigma = trust(eps, 1.5, 4.0)
    assert sigma.tolist()[:3] == [1.0, 1.0, 1.0] and sigma[3] == pytest.approx(0.5) and sigma[4:].tolist() == [0.0, 0.0]
    fine = trust(np.linspace(1.5, 4.0, 200), 1.5, 4.0)
    assert np.all(np.diff(fine) <= 0) and np.abs(np.diff(fine)).max() < 0.02


def test_data_support_marks_only_where_frames_are():
    rng = np.random.default_rng(1)
    cv = rng.normal(1.0, 0.2, size=(5000, 1))  # one basin, near x = 1
    support = data_support(cv, (-2.0,), (2.0,), (False,), min_frames=10)
    assert support(np.array([[1.0]]))[0] == pytest.approx(1.0)
    assert support(np.array([[-1.0]]))[0] == 0.0  # the other basin: never visited
    values = support(np.linspace(-2, 2, 401)[:, None])
    assert values.min() >= 0 and values.max() <= 1 and np.abs(np.diff(values)).max() < 0.2


def test_data_support_wraps_periodic_cvs():
    cv = np.concatenate([np.full((50, 1), -3.1), np.full((50, 1), 3.1)])
    support = data_support(cv, (-np.pi,), (np.pi,), (True,), min_frames=10)
    assert support(np.array([[np.pi - 1e-6], [-np.pi + 1e-6]])).min() > 0.9


def test_starts_reseed_the_frontier_and_keep_the_rest():
    last = np.arange(8) * 10 + 9  # each walker's own last frame
    scores = np.zeros(80)
    scores[[3, 33, 55, 71]] = 1.0  # the frontier
    frames, seeded = choose_starts(last, scores, 8, 0.5, np.random.default_rng(0))
    assert seeded.sum() == 4
    assert set(frames[seeded]) == {3, 33, 55, 71}
    assert (frames[~seeded] == last[~seeded]).all()
    assert frontier_scores(np.array([0.0, 2.0]), np.array([100, 0])).tolist() == [0.0, 1.0]


def test_applied_bias_fills_up_to_the_lowest_exit_and_joins_the_landscape_beyond():
    """One basin known between a low exit (toward the barrier) and a high wall: the bias is
    (1 - 1/gamma) (F_exit - F) inside, zero at and beyond both edges, never a step."""
    x = np.linspace(-2, 2, 401)
    F = 25 * (x**2 - 1) ** 2
    V = -(1 - 1 / 8) * F + 3.0  # the VES minimiser up to a constant
    known = (x > 0.2) & (x < 1.5)
    bias = applied_bias(V, known.astype(float), cap=1e3, periodic=(False,))
    exit_F = F[known][0]  # F at x = 0.2 is below F at the wall, x = 1.5
    assert bias[known].max() == pytest.approx((1 - 1 / 8) * exit_F, rel=1e-3)
    assert bias[~known].max() == 0.0 and bias[known][0] == pytest.approx(0.0, abs=1e-9)
    assert bias[known][-1] == 0.0  # the wall's higher edge: clipped, no cliff
    np.testing.assert_allclose(bias[known], np.clip((1 - 1 / 8) * (exit_F - F[known]), 0, None), atol=1e-9)
    # all of the domain known: the full well-tempered fill, from the minimum of V
    full = applied_bias(V, np.ones_like(x), cap=1e3, periodic=(False,))
    assert full.max() == pytest.approx((1 - 1 / 8) * F.max(), rel=1e-6)
    assert frontier(known, (False,)).sum() == 2
    assert not frontier(np.ones((5, 5), dtype=bool), (True, True)).any()


def test_each_known_basin_is_filled_up_to_its_own_exit():
    """Two basins known apart, the model's offset between them wrong by 10 kJ/mol: each is filled
    to its own exit toward the unknown barrier, so walkers are pushed over it from both sides."""
    x = np.linspace(-2, 2, 401)
    F = 25 * (x**2 - 1) ** 2 + np.where(x < 0, 10.0, 0.0)  # the left basin misplaced
    known = ((x > 0.3) & (x < 1.4)) | ((x < -0.3) & (x > -1.4))
    bias = applied_bias(-(1 - 1 / 8) * F, known.astype(float), cap=1e3, periodic=(False,))
    for side in (x < 0, x > 0):
        piece = known & side
        exit_F = F[piece][np.argmin(np.abs(x[piece]))]  # the edge toward the barrier
        np.testing.assert_allclose(bias[piece], np.clip((1 - 1 / 8) * (exit_F - F[piece]), 0, None), atol=1e-9)
    assert bias[~known].max() == 0.0


def test_trusted_pieces_join_across_a_periodic_boundary():
    trusted = np.zeros(20, dtype=bool)
    trusted[[0, 1, 2, 10, 11, 17, 18, 19]] = True
    labels, n = components(trusted, (True,))
    assert n == 2 and labels[0] == labels[19] and labels[0] != labels[10]
    assert components(trusted, (False,))[1] == 3
