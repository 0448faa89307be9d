"""Toy potentials: the numpy evaluator agrees with OpenMM, and the quadrature reference
agrees with closed-form PMFs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from cgflow.systems.expression import ExpressionError, parse
from cgflow.systems.toy import BUILTINS, CV, KB, ToySystem

T = 300.0
kT = KB * T


def _bin_integrated(density, edges):
    """-kT ln( integral of density over each bin / bin width ), shifted to min 0."""
    mass = np.array([integrate.quad(density, a, b, epsabs=0, epsrel=1e-10)[0] for a, b in zip(edges[:-1], edges[1:])])
    F = -kT * np.log(mass / np.diff(edges))
    return F - F.min()


def test_quadrature_separable_quartic_harmonic():
    toy = ToySystem("3*x^4 + 20*y^2", (CV("x", "x"),), {"x": (-1.5, 1.5), "y": (-2.0, 2.0)})
    edges = np.linspace(-1.5, 1.5, 41)
    F = toy.reference_fes([edges], T)
    exact = _bin_integrated(lambda x: np.exp(-3 * x**4 / kT), edges)
    assert np.max(np.abs(F - exact)) < 1e-3


@pytest.mark.parametrize("bins", [50, 36])
def test_quadrature_in_three_coordinates_has_no_aliasing(bins):
    """Each quadrature cell goes whole into one bin: too few cells per bin alias the PMF."""
    toy = ToySystem("6*(x^2-1)^2 + 10*y^2 + 10*z^2", (CV("x", "x"),), {c: (-2.0, 2.0) for c in "xyz"})
    edges = np.linspace(-2.0, 2.0, bins + 1)
    F = toy.reference_fes([edges], T)
    exact = _bin_integrated(lambda x: np.exp(-6 * (x**2 - 1) ** 2 / kT), edges)
    scored = exact < 6 * kT
    assert np.max(np.abs(F - exact)[scored]) < 0.005 * kT  # 0.34 kT at 120 cells per coordinate


def test_quadrature_linear_combination_of_gaussian():
    kx, ky = 40.0, 10.0
    toy = ToySystem(f"0.5*{kx}*x^2 + 0.5*{ky}*y^2", (CV("s", "0.8*x - 0.6*y"),), {"x": (-1.5, 1.5), "y": (-3.0, 3.0)})
    sigma = np.sqrt(kT * (0.64 / kx + 0.36 / ky))
    edges = np.linspace(-3 * sigma, 3 * sigma, 31)
    F = toy.reference_fes([edges], T)
    mass = np.diff(stats.norm.cdf(edges, scale=sigma))
    exact = -kT * np.log(mass / np.diff(edges))
    exact -= exact.min()
    assert np.max(np.abs(F - exact)) < 0.02 * kT


def test_double_well_2d_entropic_pmf():
    b = BUILTINS["double_well_2d"]
    toy = ToySystem(b.energy, (CV("x", "x"),), b.box)
    edges = np.linspace(-1.6, 1.6, 33)
    F = toy.reference_fes([edges], T)
    # y is harmonic with stiffness 20(1 + x^2/2): integrating it out adds kT/2 ln(1 + x^2/2)
    exact = _bin_integrated(lambda x: np.exp(-25 * (x**2 - 1) ** 2 / kT) / np.sqrt(1 + 0.5 * x**2), edges)
    region = exact < 12 * kT
    assert np.max(np.abs(F - exact)[region]) < 5e-3 * kT


def test_muller_brown_minimum_and_barrier():
    b = BUILTINS["muller_brown"]
    toy = ToySystem(b.energy, (CV("x", "x"),), b.box)
    point, on_edge = toy.grid_minimum(400)
    assert not on_edge
    assert point["x"] == pytest.approx(-0.558, abs=0.01) and point["y"] == pytest.approx(1.442, abs=0.01)
    u_min = toy.energies(np.array([[-0.558, 1.442, 0.0]]))[0]
    u_saddle = toy.energies(np.array([[-0.822, 0.624, 0.0]]))[0]
    assert (u_saddle - u_min) / kT == pytest.approx(4.3, abs=0.1)


def test_numpy_energies_match_openmm():
    import openmm
    import openmm.unit as u

    b = BUILTINS["muller_brown"]
    toy = ToySystem(b.energy + " + step(x)*x^3 + 0.1*z^2", (CV("x", "x"),), {**b.box, "z": (-1, 1)})
    rng = np.random.default_rng(0)
    pos = rng.uniform([-1.5, -0.2, -1], [1.2, 2.0, 1], size=(37, 3))
    context = openmm.Context(toy.create_system(37), openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pos)
    total = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    assert np.sum(toy.energies(pos)) == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize(
    "text, x, expected",
    [
        ("2*x^2 - x", 3.0, 15.0),
        ("a*x; a=b+1; b=2", 2.0, 6.0),
        ("step(x) + select(x, 5, 7)", 0.0, 8.0),
        ("min(x, 1) + max(x, 1) + abs(-x) + square(x) + cube(x) + recip(x)", 2.0, 1 + 2 + 2 + 4 + 8 + 0.5),
    ],
)
def test_lepton_semantics(text, x, expected):
    assert parse(text)(x=np.array([x]))[0] == pytest.approx(expected)


@pytest.mark.parametrize("text", ["__import__('os')", "x.real", "x**2", "lambda: x", "exec", "x; a", "a*x; a=a"])
def test_expression_rejects_non_lepton_text(text):
    with pytest.raises(ExpressionError):
        parse(text)


@pytest.mark.parametrize("expression, unit", [("x", "nm"), ("0.8*x - 0.6*y + 1", "nm"), ("x*y", ""), ("sin(x)", "")])
def test_a_cv_is_in_nm_only_when_it_is_a_linear_combination_of_coordinates(expression, unit):
    assert CV("s", expression).unit == unit
