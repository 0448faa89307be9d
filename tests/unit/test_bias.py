"""The tabulated bias: the energy OpenMM applies equals the grid's own interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from cgflow.guidance.bias import FORCE_GROUP, BiasGrid
from cgflow.sampling.engine import MDSettings, make_context
from cgflow.systems.toy import CV, ToySystem

SETTINGS = MDSettings(300.0, 0.002, 1.0, 100, 0, 10, 100)


def _group_energy(context) -> float:
    import openmm.unit as u

    state = context.getState(getEnergy=True, groups={FORCE_GROUP})
    return state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def _random_grid(names, lower, upper, periodic, points, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=5.0, size=(points,) * len(names))
    for i, p in enumerate(periodic):
        if p:
            idx = [slice(None)] * values.ndim
            idx[i] = -1
            src = [slice(None)] * values.ndim
            src[i] = 0
            values[tuple(idx)] = values[tuple(src)]
    return BiasGrid(tuple(names), tuple(lower), tuple(upper), tuple(periodic), values)


@pytest.mark.parametrize("cvs", [(CV("x", "x"),), (CV("s", "0.8*x - 0.6*y"), CV("y", "y"))])
def test_toy_bias_energy_matches_grid_interpolation_per_walker(cvs):
    toy = ToySystem("x^2 + y^2", cvs, {"x": (-2, 2), "y": (-2, 2)})
    ranges = toy.cv_range()
    grid = _random_grid(toy.cv_names, [r[0] for r in ranges], [r[1] for r in ranges], [False] * len(cvs), 17)
    rng = np.random.default_rng(1)
    pos = rng.uniform(-2.6, 2.6, size=(25, 3))  # some walkers beyond the grid: clamped there
    expected = grid(toy.cv_values(pos))
    for i in range(len(pos)):
        context, _ = make_context(toy, 1, SETTINGS, "Reference", {}, bias=grid, positions=pos[i : i + 1])
        assert _group_energy(context) == pytest.approx(expected[i], abs=1e-9)
    context, _ = make_context(toy, len(pos), SETTINGS, "Reference", {}, bias=grid, positions=pos)
    assert _group_energy(context) == pytest.approx(expected.sum(), rel=1e-10)


def check_alanine_periodic_bias(platform: str, abs_tol: float) -> None:
    """The (phi, psi) bias OpenMM applies on ``platform`` equals the periodic grid's interpolation."""
    from cgflow.systems.alanine import AlanineDipeptide

    ala = AlanineDipeptide("vacuum")
    grid = _random_grid(("phi", "psi"), (-np.pi, -np.pi), (np.pi, np.pi), (True, True), 25)
    rng = np.random.default_rng(2)
    for _ in range(5):
        pos = ala.initial_positions() + rng.normal(scale=0.03, size=(22, 3))
        context, _ = make_context(ala, 1, SETTINGS, platform, {}, bias=grid, positions=pos)
        assert _group_energy(context) == pytest.approx(grid(ala.cv_values(pos[None]))[0], abs=abs_tol)


def test_alanine_periodic_bias_matches_grid_interpolation():
    check_alanine_periodic_bias("Reference", 1e-8)


def test_bias_wraps_periodic_and_clamps_other_cvs():
    grid = _random_grid(("phi",), (-np.pi,), (np.pi,), (True,), 31)
    s = np.array([[0.3], [0.3 + 2 * np.pi], [0.3 - 4 * np.pi]])
    assert np.allclose(grid(s), grid(s[:1]))
    flat = _random_grid(("x",), (-1.0,), (1.0,), (False,), 31)
    assert flat(np.array([[5.0]]))[0] == pytest.approx(flat.values[-1])
    assert flat(np.array([[-5.0]]))[0] == pytest.approx(flat.values[0])


def test_periodic_grid_must_close():
    values = np.arange(10.0)
    with pytest.raises(ValueError, match="first and last"):
        BiasGrid(("phi",), (-np.pi,), (np.pi,), (True,), values)


def test_save_load_round_trip(tmp_path):
    grid = _random_grid(("a", "b"), (-1.0, 0.0), (1.0, 2.0), (False, False), 9)
    grid = BiasGrid(grid.names, grid.lower, grid.upper, grid.periodic, grid.values, {"round": 3, "gamma": 8.0})
    grid.save(tmp_path / "bias.npz")
    back = BiasGrid.load(tmp_path / "bias.npz")
    assert back.names == grid.names and back.meta == grid.meta and back.periodic == grid.periodic
    s = np.random.default_rng(0).uniform([-1, 0], [1, 2], size=(50, 2))
    np.testing.assert_array_equal(back(s), grid(s))


def test_biased_run_records_the_bias_energy(campaign, tmp_path):
    import pandas as pd

    from cgflow.sampling.round import run

    c = campaign(sampling={"walkers": 8, "steps": 2000, "platform": "Reference"})
    grid = _random_grid(("x",), (-2.0,), (2.0,), (False,), 41)
    grid.save(tmp_path / "bias.npz")
    df = pd.read_parquet(run(c, 1, tmp_path / "r", bias_path=tmp_path / "bias.npz"))
    np.testing.assert_allclose(df.bias_energy_kJmol, grid(df[["x"]].to_numpy()), atol=1e-12)
