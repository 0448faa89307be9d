"""Reweighting estimators of DiffTRe and relative entropy against exact quadrature on a 1-D toy,
and the N_eff rule that decides when CG samples are re-simulated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.training.difftre import reweighted_average
from cgflow.training.relative_entropy import surrogate
from cgflow.training.trainer import ReweightedSamples, n_eff, needs_resimulation, reweight

kT = 2.494
GRID = np.linspace(-3, 3, 60001)


class Quartic(torch.nn.Module):
    """U_theta(x) = a x^2 + b x^4 + c x (kJ/mol) on x of shape (n, 1)."""

    def __init__(self, a, b, c):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor([a, b, c], dtype=torch.float64))

    def forward(self, x):
        x = x[..., 0]
        return self.theta[0] * x**2 + self.theta[1] * x**4 + self.theta[2] * x


def _density(theta):
    u = theta[0] * GRID**2 + theta[1] * GRID**4 + theta[2] * GRID
    p = np.exp(-(u - u.min()) / kT)
    return p / np.trapezoid(p, GRID), u


def _exact_avg(theta, f):
    p, _ = _density(theta)
    return np.trapezoid(p * f(GRID), GRID)


def _log_z(theta):
    _, u = _density(theta)
    return np.log(np.trapezoid(np.exp(-(u - u.min()) / kT), GRID)) - u.min() / kT


def _samples(theta, n, rng):
    p, _ = _density(theta)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return torch.as_tensor(np.interp(rng.uniform(size=n), cdf, GRID))[:, None]


def test_difftre_gradient_matches_finite_differences_of_the_exact_average():
    rng = np.random.default_rng(0)
    theta_old = np.array([-4.0, 1.5, 0.5])
    model = Quartic(*theta_old)
    x = _samples(theta_old, 400_000, rng)
    with torch.no_grad():
        u_old = model(x)
    obs = torch.cat([x**2, x], dim=1)  # two observables
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)
    loss = ((reweighted_average(reweight(model(x), u_old, kT), obs) - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, model.theta)

    def exact_loss(th):
        return (_exact_avg(th, lambda g: g**2) - 1.0) ** 2 + _exact_avg(th, lambda g: g) ** 2

    h = 1e-4
    fd = np.array([(exact_loss(theta_old + h * e) - exact_loss(theta_old - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(grad.numpy(), fd, rtol=0.05, atol=0.02 * np.abs(fd).max())


def test_reweighted_average_follows_the_parameters_away_from_the_sampled_ones():
    rng = np.random.default_rng(1)
    theta_old, theta_new = np.array([-4.0, 1.5, 0.5]), np.array([-3.0, 1.5, 1.5])
    model = Quartic(*theta_old)
    x = _samples(theta_old, 400_000, rng)
    with torch.no_grad():
        u_old = model(x)
        model.theta.copy_(torch.as_tensor(theta_new))
        avg = reweighted_average(reweight(model(x), u_old, kT), x**2).item()
    assert avg == pytest.approx(_exact_avg(theta_new, lambda g: g**2), rel=0.02)
    assert abs(_exact_avg(theta_old, lambda g: g**2) - avg) > 0.1  # the parameters did move the average


def test_relative_entropy_gradient_matches_finite_differences_of_exact_srel():
    rng = np.random.default_rng(2)
    theta_fg, theta_old = np.array([-5.0, 2.0, -1.0]), np.array([-4.0, 1.5, 0.5])
    x_fg = _samples(theta_fg, 400_000, rng)  # the "FG" target distribution
    x_cg = _samples(theta_old, 400_000, rng)
    model = Quartic(*theta_old)
    with torch.no_grad():
        u_old = model(x_cg)
    v = torch.full((len(x_fg),), 1 / len(x_fg), dtype=torch.float64)
    s = surrogate(model, x_fg, v, x_cg, reweight(model(x_cg), u_old, kT), kT)
    (grad,) = torch.autograd.grad(s, model.theta)

    def s_rel(th):  # beta <U_theta>_FG + ln Z_theta (+ const)
        u = lambda g: th[0] * g**2 + th[1] * g**4 + th[2] * g  # noqa: E731
        return _exact_avg(theta_fg, u) / kT + _log_z(th)

    h = 1e-4
    fd = np.array([(s_rel(theta_old + h * e) - s_rel(theta_old - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(grad.numpy(), fd, rtol=0.05, atol=0.02 * np.abs(fd).max())


def test_n_eff_of_uniform_one_hot_and_split_weights():
    assert n_eff(torch.full((50,), 1 / 50, dtype=torch.float64)) == pytest.approx(50)
    assert n_eff(torch.eye(50, dtype=torch.float64)[3]) == pytest.approx(1)
    w = torch.zeros(50, dtype=torch.float64)
    w[:2] = 0.5
    assert n_eff(w) == pytest.approx(2)
    assert not needs_resimulation(torch.full((10,), 0.1, dtype=torch.float64), 0.9)
    w = torch.tensor([0.5] + [0.5 / 9] * 9, dtype=torch.float64)  # N_eff = 6.5 < 9
    assert n_eff(w) == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 0.5 * np.log(0.5 / 9))))
    assert needs_resimulation(w, 0.9) and not needs_resimulation(w, 0.6)
    with pytest.raises(ValueError, match="threshold"):
        needs_resimulation(w, 1.5)


def test_samples_are_reused_until_n_eff_falls_below_the_threshold():
    rng = np.random.default_rng(3)
    calls = []

    def simulate(model):
        calls.append(model.theta.detach().clone())
        return _samples(model.theta.detach().numpy(), 20_000, rng)

    model = Quartic(-4.0, 1.5, 0.0)
    cache = ReweightedSamples(simulate, kT, threshold=0.9)
    w, _ = cache.weights(model)
    assert len(calls) == 1 and n_eff(w) == pytest.approx(20_000)
    with torch.no_grad():
        model.theta[2] += 0.2  # small change: N_eff stays above 0.9 N
    w, _ = cache.weights(model)
    assert len(calls) == 1 and 0.9 * 20_000 <= n_eff(w) < 20_000
    with torch.no_grad():
        model.theta[2] += 5.0  # large change: re-simulate under the new parameters
    w, _ = cache.weights(model)
    assert len(calls) == 2 and n_eff(w) == pytest.approx(20_000)
    assert torch.equal(calls[-1], model.theta.detach())


def test_samples_are_refreshed_after_max_reuse_updates_whatever_n_eff_says():
    calls = []

    def simulate(model):
        calls.append(1)
        return torch.linspace(-1, 1, 100, dtype=torch.float64)[:, None]

    model = Quartic(-4.0, 1.5, 0.0)  # unchanged, so N_eff stays N
    cache = ReweightedSamples(simulate, kT, threshold=0.9, max_reuse=3)
    for _ in range(7):
        w, _ = cache.weights(model)
        assert n_eff(w) == pytest.approx(100)
    assert len(calls) == 3  # updates 1-3, 4-6, 7
    calls.clear()
    uncapped = ReweightedSamples(simulate, kT, threshold=0.9)
    for _ in range(7):
        uncapped.weights(model)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="max_reuse"):
        ReweightedSamples(simulate, kT, max_reuse=0)
