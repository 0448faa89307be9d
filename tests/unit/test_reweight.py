"""MBAR over rounds recovers the unbiased PMF from exactly sampled biased rounds."""

from __future__ import annotations

import numpy as np
import pytest

from cgflow.analysis.fes import compare_to_reference, histogram_fes
from cgflow.analysis.reweight import kish, mbar_weights

kT = 2.494
EDGES = [np.linspace(-2, 2, 41)]


def U(s):
    return 25 * (s**2 - 1) ** 2  # 10 kT barrier


def _exact_samples(total, n, rng):
    grid = np.linspace(-2, 2, 40001)
    p = np.exp(-(total(grid) - total(grid).min()) / kT)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.interp(rng.uniform(size=n), cdf, grid)


def _exact_F():
    fine = np.linspace(-2, 2, 40001)
    mass, _ = np.histogramdd(fine[:, None], bins=EDGES, weights=np.exp(-U(fine) / kT))
    F = -kT * np.log(mass)
    return F - F.min()


def test_mbar_over_biased_rounds_recovers_the_unbiased_pmf():
    rng = np.random.default_rng(0)
    biases = [None, lambda s: -0.9 * U(s[:, 0]), lambda s: -0.5 * U(s[:, 0]) + 3 * s[:, 0]]
    parts, rounds = [], []
    for k, b in enumerate(biases):
        total = U if b is None else (lambda s, b=b: U(s) + b(s[:, None]))
        parts.append(_exact_samples(total, 20000, rng))
        rounds.append(np.full(20000, k))
    cv, rounds = np.concatenate(parts)[:, None], np.concatenate(rounds)
    rw = mbar_weights(cv, rounds, biases, kT)
    assert rw.weights.sum() == pytest.approx(1.0)
    assert rw.n_k.tolist() == [20000] * 3
    fes = histogram_fes(cv, EDGES, kT, weights=rw.weights, blocks=np.arange(len(cv)) // 500, n_bootstrap=20)
    score = compare_to_reference(fes, _exact_F(), kT, cutoff_kT=6.0)
    assert score["coverage"] == 1.0 and score["rmse_kT"] < 0.1, score
    assert 0 < rw.ess <= len(cv) and rw.overlap is not None and 0 < rw.overlap <= 1
    # ignoring the biases (plain histogram of all rounds) is far off: the weights matter
    naive = histogram_fes(cv, EDGES, kT, blocks=np.arange(len(cv)) // 500, n_bootstrap=20)
    assert compare_to_reference(naive, _exact_F(), kT, cutoff_kT=6.0)["rmse_kT"] > 0.5


def test_one_unbiased_round_gives_uniform_weights():
    cv = np.random.default_rng(1).normal(size=(100, 1))
    rw = mbar_weights(cv, np.zeros(100, int), [None], kT)
    np.testing.assert_allclose(rw.weights, 0.01)
    assert rw.ess == pytest.approx(100) and rw.overlap is None


def test_kish():
    assert kish(np.ones(10)) == pytest.approx(10)
    assert kish(np.array([1.0, 0, 0, 0])) == pytest.approx(1)


def test_frames_outside_the_rounds_are_an_error():
    with pytest.raises(ValueError, match="every frame"):
        mbar_weights(np.zeros((3, 1)), np.array([0, 1, 2]), [None, None], kT)
