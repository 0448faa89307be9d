"""The ccg energy: Lepton expressions in torch, the linear-CV geometry, pointwise quadrature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.systems.expression import LEPTON_FUNCTIONS, parse
from cgflow.systems.toy import BUILTINS, CV, KB, ToySystem

torch.set_num_threads(1)
KT = KB * 300.0

ARGS = {"atan2": "atan2(x, y)", "min": "min(x, y)", "max": "max(x, y)", "select": "select(step(x), y, z)",
        "sqrt": "sqrt(abs(x))", "log": "log(1 + x^2)", "asin": "asin(0.5*tanh(x))", "acos": "acos(0.5*tanh(x))",
        "recip": "recip(2 + sin(x))", "sec": "sec(x)", "csc": "csc(1 + 0.1*x)", "cot": "cot(1 + 0.1*x)",
        "delta": "delta(floor(x))"}


@pytest.mark.parametrize("function", LEPTON_FUNCTIONS)
def test_every_lepton_function_evaluates_in_torch_as_in_numpy(function):
    from cgflow.reconstruction.energy import torch_expression

    text = ARGS.get(function, f"{function}(x)") + " + 2*y^2 - z + exp(2)"
    expr = parse(text)
    rng = np.random.default_rng(0)
    pts = {c: rng.uniform(-1.5, 1.5, 64) for c in "xyz"}
    pts["x"][:4] = [0.0, 1.0, -1.0, 0.5]  # step/select/delta/floor edge cases
    fn = torch_expression(expr)
    got = fn(*(torch.tensor(pts[v], dtype=torch.float64) for v in expr.variables))
    want = expr(**pts)
    np.testing.assert_allclose(np.broadcast_to(got.numpy(), (64,)), want, rtol=1e-12, atol=1e-12)


def test_torch_energy_has_gradients():
    from cgflow.reconstruction.energy import torch_expression

    expr = parse(BUILTINS["muller_brown"].energy)
    x = torch.tensor([0.1, -0.5], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.3, 1.4], dtype=torch.float64, requires_grad=True)
    u = torch_expression(expr)(x, y)
    u.sum().backward()
    h = 1e-6
    fd = (expr(x=x.detach().numpy() + h, y=y.detach().numpy()) - expr(x=x.detach().numpy() - h, y=y.detach().numpy())) / (2 * h)
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-6)


def test_rotated_linear_cv_geometry_and_quadrature():
    """The expression example: a double well along s = 0.8x - 0.6y, harmonic across it; F(s) = 5 (s²-1)²."""
    from cgflow.reconstruction.energy import LinearCVGeometry, exact_pmf

    toy = ToySystem("5*((0.8*x-0.6*y)^2-1)^2 + 10*(0.6*x+0.8*y)^2", (CV("s", "0.8*x - 0.6*y"),),
                    {"x": (-2.0, 2.0), "y": (-2.0, 2.0)})
    g = LinearCVGeometry.from_toy(toy)
    np.testing.assert_allclose(g.A, [[0.8, -0.6]])
    np.testing.assert_allclose(g.basis[:, 0], [0.6, 0.8], atol=1e-12)  # orthonormal, sign fixed
    s = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    y = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    r = g.positions(s, y).numpy()
    s2, y2 = g.split(r)
    np.testing.assert_allclose(s2, s.numpy(), atol=1e-12)
    np.testing.assert_allclose(y2, y.numpy(), atol=1e-12)
    grid = np.linspace(-1.6, 1.6, 33)
    F = exact_pmf(toy, grid[:, None], KT)
    analytic = 5 * (grid**2 - 1) ** 2
    analytic -= analytic.min()
    region = analytic < 6 * KT
    np.testing.assert_allclose(F[region], analytic[region], atol=0.01 * KT)


def test_rotated_cv_ccg_end_to_end():
    """The general linear-CV path: a flow over t = 0.6x + 0.8y given s, against the analytic PMF."""
    from cgflow.reconstruction.energy import ToyEnergy
    from cgflow.reconstruction.flow import ConditionalFlow
    from cgflow.reconstruction.free_energy import EstimateSettings, ccg_free_energy
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train

    toy = ToySystem("5*((0.8*x-0.6*y)^2-1)^2 + 10*(0.6*x+0.8*y)^2", (CV("s", "0.8*x - 0.6*y"),),
                    {"x": (-2.0, 2.0), "y": (-2.0, 2.0)})
    energy = ToyEnergy(toy, KT)
    torch.manual_seed(0)
    flow = ConditionalFlow(1, 1, y_loc=0.0, y_scale=0.5, s_loc=0.0, s_scale=0.8)
    train(flow, energy, Conditioning.uniform(-1.8, 1.8), TrainSettings(steps=200, batch=256, seed=1), KT)
    grid = np.linspace(-1.6, 1.6, 17)
    frame = ccg_free_energy(flow, energy, grid[:, None], KT, EstimateSettings(samples_per_point=1000, seed=2), ["s"])
    analytic = 5 * (grid**2 - 1) ** 2
    region = analytic - analytic.min() < 6 * KT
    assert frame.trusted[region].all()
    diff = frame.F_kJmol.to_numpy() - analytic
    assert np.abs(diff - diff[np.argmin(analytic)])[region].max() < 0.25 * KT
    assert list(frame.columns[:3]) == ["s", "F_kJmol", "F_err_kJmol"]


def test_box_restriction_gives_zero_weight_outside():
    from cgflow.reconstruction.energy import ToyEnergy

    energy = ToyEnergy(ToySystem(BUILTINS["double_well_2d"].energy, (CV("x", "x"),), dict(BUILTINS["double_well_2d"].box)), KT)
    s = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [2.5]], dtype=torch.float64)
    u = energy.log_weight_energy(s, y)
    assert np.isfinite(u[0].item()) and u[1].item() == float("inf")
    wall = energy.training_energy(s, y) - energy(s, y)
    assert wall[0].item() == 0 and wall[1].item() == pytest.approx(1e4 * KT * 0.25)


@pytest.mark.parametrize("energy, cv, message", [
    ("x^2 + y^2", "x^2 + y", "not linear"),
    ("x^2 + y^2", "x + z", "does not"),
    ("6*(x^2-1)^2", "x", "nothing to reconstruct"),
])
def test_unsupported_geometries_are_refused(energy, cv, message):
    from cgflow.reconstruction.energy import LinearCVGeometry

    toy = ToySystem(energy, (CV("c", cv),), {"x": (-2.0, 2.0), "y": (-2.0, 2.0), "z": (-2.0, 2.0)})
    with pytest.raises(ValueError, match=message):
        LinearCVGeometry.from_toy(toy)


def test_pareto_khat_recovers_the_tail_index():
    from scipy.stats import genpareto

    from cgflow.reconstruction.free_energy import kish_ess, pareto_khat

    rng = np.random.default_rng(0)
    for xi in (0.0, 0.5, 1.0):
        khat = np.mean([pareto_khat(np.log(genpareto.rvs(xi, size=2000, random_state=rng))) for _ in range(10)])
        assert abs(khat - xi) < 0.12, (xi, khat)
    assert pareto_khat(np.zeros(100)) == float("-inf")  # equal weights: no tail
    assert kish_ess(np.zeros(100)) == pytest.approx(100)
    assert kish_ess(np.array([0.0, -np.inf, -np.inf])) == pytest.approx(1)
