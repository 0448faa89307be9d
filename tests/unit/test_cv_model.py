"""The CV-space CG model (METHODS §1) trained by reweighted maximum likelihood on exact samples
of known densities: free energies, ensemble uncertainty, reweighting, a periodic 2-D surface,
the Langevin model average, the CG Langevin integrator itself, and the cg.pt round trip."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cgflow.models.cv_energy import (
    CVEnergyEnsemble,
    Grid,
    ensemble_fes,
    free_energies,
    free_energies_at,
    load,
    save,
)
from cgflow.sampling.cg_langevin import langevin
from cgflow.training.max_likelihood import fit
from tests.conftest import Killed

KT = 2.494  # kJ/mol at 300 K
BOX = ([-2.0], [2.0], [False])
FAST = {"steps": 500, "batch_size": 1024, "lr": 1e-2}  # converges these toys in ~2-5 s on one thread
N_SAMPLES = 20_000


@pytest.fixture(autouse=True)
def one_thread():
    """These small matrices run faster on one thread; with two, OpenMP threads that wait for a
    busy core slowed one model force evaluation from 0.6 ms to 70 ms on a shared machine (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def double_well(s):
    return 6.0 * (s**2 - 1.0) ** 2


def sample_1d(energy, n, rng, lower=-2.0, upper=2.0, cells=40_000):
    """Exact samples of ∝ exp(-energy/kT) on [lower, upper]: inverse CDF, uniform within fine cells."""
    edges = np.linspace(lower, upper, cells + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    p = np.exp(-(energy(mid) - energy(mid).min()) / KT)
    cdf = np.cumsum(p) / p.sum()
    cell = np.minimum(np.searchsorted(cdf, rng.random(n)), cells - 1)
    return edges[cell] + rng.random(n) * np.diff(edges)[cell]


def rmse_kT(F, F_exact, region):
    """RMSE in kT over the region after removing the mean offset (free energies are relative)."""
    diff = F[region] - F_exact[region]
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)) / KT)


def fit_1d(s, weights=None, **kwargs):
    model = CVEnergyEnsemble(*BOX)
    w = np.ones(len(s)) if weights is None else weights
    fit(model, s[:, None], w, np.arange(len(s)) % 20, KT, **{**FAST, **kwargs})
    return model


GRID_1D = Grid(*BOX, 200)
F_EXACT_1D = double_well(GRID_1D.points[:, 0]) - double_well(GRID_1D.points[:, 0]).min()
REGION_1D = F_EXACT_1D < 4 * KT


def test_double_well_free_energy_and_uncertainty():
    rng = np.random.default_rng(1)
    s = sample_1d(double_well, N_SAMPLES, rng)
    t0 = time.perf_counter()
    F, eps = ensemble_fes(fit_1d(s), GRID_1D, KT)
    err = rmse_kT(F, F_EXACT_1D, REGION_1D)
    seconds = time.perf_counter() - t0
    eps_mean, eps_max = eps[REGION_1D].mean(), eps[REGION_1D].max()
    print(f"double well: RMSE {err:.3f} kT, eps mean {eps_mean:.3f} max {eps_max:.3f} kJ/mol, {seconds:.1f} s")
    assert err < 0.25
    assert eps_mean < 0.5

    # no data beyond s = 0.3: the members extrapolate differently there
    cut = s[s < 0.3]
    _, eps_cut = ensemble_fes(fit_1d(cut), GRID_1D, KT)
    x = GRID_1D.points[:, 0]
    empty, full = eps_cut[x > 1].mean(), eps_cut[x < -0.5].mean()
    print(f"cut data: eps {empty:.2f} kJ/mol without data, {full:.2f} with")
    assert empty > 2 * full


def test_members_are_fitted_to_block_bootstrap_draws_of_the_data():
    """The whole right well in one block of walkers and the left well in 19: members that did
    not draw that one block never saw the right well, so the ensemble disagrees there (measured
    15 kJ/mol against 1.4; members fitted to all the data agree everywhere, 0.07 against 0.07)."""
    rng = np.random.default_rng(1)
    s = sample_1d(double_well, N_SAMPLES, rng)
    blocks = np.where(s > 0, 0, 1 + np.arange(len(s)) % 19)
    model = CVEnergyEnsemble(*BOX)
    fit(model, s[:, None], np.ones(len(s)), blocks, KT, **FAST)
    _, eps = ensemble_fes(model, GRID_1D, KT)
    x = GRID_1D.points[:, 0]
    right, left = eps[REGION_1D & (x > 0.5)].mean(), eps[REGION_1D & (x < -0.5)].mean()
    assert right > 5 * left, (right, left)


def test_reweighting_recovers_unbiased_free_energy():
    # FG bias V = -0.8 U flattens the wells; weights exp(+V/kT) undo it
    rng = np.random.default_rng(2)
    s = sample_1d(lambda x: 0.2 * double_well(x), N_SAMPLES, rng)
    weights = np.exp(-0.8 * double_well(s) / KT)
    F, _ = ensemble_fes(fit_1d(s, weights), GRID_1D, KT)
    err = rmse_kT(F, F_EXACT_1D, REGION_1D)
    print(f"reweighted: RMSE {err:.3f} kT")
    assert err < 0.25
    assert rmse_kT(0.2 * F_EXACT_1D, F_EXACT_1D, REGION_1D) > 0.5  # the unweighted answer, 0.2 U, is 0.78 kT off


def dihedral_toy(phi, psi):
    return 3.0 * np.cos(phi) + 2.0 * np.cos(psi - 1.0) + np.cos(phi + psi)


def test_periodic_2d_surface():
    rng = np.random.default_rng(3)
    fine = Grid([-np.pi] * 2, [np.pi] * 2, [True] * 2, 400)
    h = 2 * np.pi / 400
    p = np.exp(-dihedral_toy(*fine.points.T) / KT)
    cell = rng.choice(len(p), size=N_SAMPLES, p=p / p.sum())
    s = fine.points[cell] + (rng.random((N_SAMPLES, 2)) - 0.5) * h  # uniform in the cell, which may wrap
    model = CVEnergyEnsemble([-np.pi] * 2, [np.pi] * 2, [True] * 2)
    quadrature = Grid(model.lower, model.upper, model.periodic, 32)  # smooth surface: 32² nodes suffice
    fit(model, s, np.ones(N_SAMPLES), np.arange(N_SAMPLES) % 20, KT, grid=quadrature, **FAST)
    grid = Grid(model.lower, model.upper, model.periodic, 48)
    F, _ = ensemble_fes(model, grid, KT)
    F_exact = dihedral_toy(*grid.points.T).reshape(grid.shape)
    F_exact -= F_exact.min()
    err = rmse_kT(F, F_exact, F_exact < 4 * KT)
    print(f"2-D periodic: RMSE {err:.3f} kT")
    assert err < 0.3


def test_langevin_model_average():
    rng = np.random.default_rng(4)
    s = sample_1d(double_well, N_SAMPLES, rng)
    model = fit_1d(s, model_average="langevin", langevin={"chains": 128, "steps": 20, "dt": 0.005})
    F, _ = ensemble_fes(model, GRID_1D, KT)
    err = rmse_kT(F, F_EXACT_1D, REGION_1D)
    print(f"Langevin model average: RMSE {err:.3f} kT")
    assert err < 0.4


def test_langevin_samples_boltzmann_wraps_reflects_and_raises():
    generator = torch.Generator().manual_seed(5)

    def energy(x):
        return 6.0 * (x[:, 0] ** 2 - 1.0) ** 2

    # all replicas start in the left well; both wells must fill to their Boltzmann weights
    x = torch.full((2000, 1), -1.0, dtype=torch.float64)
    x = langevin(energy, x, KT, 0.002, 1.0, 3000, *BOX, generator)
    frames = []
    for _ in range(100):
        x = langevin(energy, x, KT, 0.002, 1.0, 20, *BOX, generator)
        frames.append(x[:, 0].numpy())
    edges = np.linspace(-2.0, 2.0, 41)
    counts = np.histogram(np.concatenate(frames), edges)[0]
    centres = 0.5 * (edges[1:] + edges[:-1])
    F_exact = double_well(centres) - double_well(centres).min()
    region = F_exact < 3 * KT
    F = -KT * np.log(counts[region])
    print(f"Langevin histogram: RMSE {rmse_kT(F, F_exact[region], slice(None)):.3f} kT")
    assert rmse_kT(F, F_exact[region], slice(None)) < 0.1

    # flat energy: a periodic CV wraps and a reflected one stays uniform up to its walls
    def flat(x):
        return 0.0 * x.sum(dim=1)

    start = torch.tensor([[np.pi - 0.01, 0.02]], dtype=torch.float64).repeat(10_000, 1)
    x = langevin(flat, start, KT, 0.002, 1.0, 400, [-np.pi, 0.0], [np.pi, 1.0], [True, False], generator)
    assert x[:, 0].min() >= -np.pi and x[:, 0].max() < np.pi
    assert (x[:, 0] < 0).float().mean() > 0.3  # went round through the boundary
    assert x[:, 1].min() >= 0.0 and x[:, 1].max() <= 1.0
    counts = np.histogram(x[:, 1].numpy(), np.linspace(0, 1, 11))[0]
    # uniform within 4 sigma; without negating the carried noise on reflection the end bins hold ~20% too many
    assert np.all(np.abs(counts - 1000) < 4 * np.sqrt(1000))

    # one-step calls chain correctly: a harmonic well keeps its variance kT/k
    x = torch.zeros(20_000, 1, dtype=torch.float64)
    for _ in range(300):
        x = langevin(lambda x: 24.0 * x[:, 0] ** 2, x, KT, 0.002, 1.0, 1, *BOX, generator)
    assert x.var().item() / (KT / 48.0) == pytest.approx(1.0, abs=0.05)  # restarting at full drift gives 0.52

    with pytest.raises(RuntimeError, match="not finite"):
        langevin(lambda x: energy(x) * torch.nan, x[:, :1], KT, 0.002, 1.0, 5, *BOX, generator)


def test_save_load_round_trip(tmp_path, monkeypatch):
    model = CVEnergyEnsemble([-np.pi, 0.0], [np.pi, 2.0], [True, False], hidden=(16, 8), members=3, seed=7)
    path = tmp_path / "round-1" / "cg.pt"
    meta = {"round": 1, "kT": KT}
    save(model, path, meta)

    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or original(*a, **k))
    loaded, loaded_meta = load(path)
    assert calls and calls[0]["weights_only"] is True
    assert loaded_meta == meta
    assert loaded.architecture == model.architecture
    s = torch.rand(50, 2) * torch.tensor([2 * np.pi, 2.0]) - torch.tensor([np.pi, 0.0])
    assert torch.equal(loaded(s), model(s))
    grid = Grid(model.lower, model.upper, model.periodic, 8)
    assert np.array_equal(free_energies(loaded, grid, KT), free_energies(model, grid, KT))


def test_diverging_fit_names_the_member():
    model = CVEnergyEnsemble(*BOX, members=3)
    with torch.no_grad():
        model.biases[-1][2] = float("nan")
    s = np.linspace(-1.0, 1.0, 100)
    with pytest.raises(RuntimeError, match="member 2's loss is nan at step 0"):
        fit(model, s[:, None], np.ones(100), np.zeros(100), KT, steps=5)


@pytest.mark.parametrize("model_average", ["quadrature", "langevin"])
def test_fit_repeats_for_a_seed(model_average):
    s = sample_1d(double_well, 3000, np.random.default_rng(6))[:, None]

    def run(seed):
        model = CVEnergyEnsemble(*BOX, hidden=(16, 16))
        options = {"steps": 20, "batch_size": 1000, "seed": seed, "model_average": model_average}
        history = fit(model, s, np.ones(len(s)), np.arange(len(s)) % 10, KT, **options)
        return history["loss"], free_energies(model, GRID_1D, KT)

    (loss_a, F_a), (loss_b, F_b), (loss_c, _) = run(0), run(0), run(1)
    assert loss_a == loss_b and np.array_equal(F_a, F_b)
    assert loss_a != loss_c


def test_free_energies_are_normalised_and_agree_off_grid():
    model = CVEnergyEnsemble([-np.pi, 0.0], [np.pi, 2.0], [True, False], hidden=(16, 16), members=3)
    grid = Grid(model.lower, model.upper, model.periodic, (40, 30))
    F = free_energies(model, grid, KT)
    assert F.shape == (3, 40, 30)
    assert np.allclose(np.exp(-F / KT).sum(axis=(1, 2)) * grid.cell_volume, 1.0)
    shifted = grid.points + [2 * np.pi, 0.0]  # one period on: the same free energies
    assert np.allclose(free_energies_at(model, grid, KT, shifted), F.reshape(3, -1), atol=1e-3)


class _Steps:
    """Stands in for ``max_likelihood._check_finite``, which a fit calls once a step: records the
    steps it runs and, at ``kill_at``, stops it as a killed job stops (the checkpoint before stays)."""

    def __init__(self, check, kill_at=None):
        self.check, self.kill_at, self.seen = check, kill_at, []

    def __call__(self, loss, step):
        if step == self.kill_at:
            raise Killed
        self.seen.append(step)
        self.check(loss, step)


@pytest.mark.parametrize("model_average", ["quadrature", "langevin"])
def test_a_killed_fit_resumes_to_the_model_of_an_uninterrupted_one(model_average, monkeypatch, tmp_path, caplog):
    from cgflow.training import max_likelihood

    monkeypatch.setattr(max_likelihood, "CHECKPOINT_EVERY", 10)
    check = max_likelihood._check_finite
    s = sample_1d(double_well, 3000, np.random.default_rng(8))[:, None]
    checkpoint = tmp_path / "cg.fit-checkpoint.pt"

    def run(lr=1e-2, kill_at=None):
        steps = _Steps(check, kill_at)
        monkeypatch.setattr(max_likelihood, "_check_finite", steps)
        model = CVEnergyEnsemble(*BOX, hidden=(16, 16))
        history = fit(model, s, np.ones(len(s)), np.arange(len(s)) % 10, KT, steps=40, batch_size=1000, lr=lr,
                      model_average=model_average, checkpoint=checkpoint)
        return history["loss"], free_energies(model, GRID_1D, KT), steps.seen, history["resumed_wall_s"]

    loss, F, _, resumed_wall = run()
    assert not checkpoint.exists() and resumed_wall == 0
    with pytest.raises(Killed):
        run(kill_at=25)
    assert checkpoint.is_file()
    with caplog.at_level("INFO", logger="cgflow.training.max_likelihood"):
        resumed_loss, resumed_F, seen, resumed_wall = run()
    assert "at step 20 of 40" in caplog.text and seen == list(range(20, 40)) and resumed_wall > 0
    assert resumed_loss == loss and np.array_equal(resumed_F, F)
    assert not checkpoint.exists()

    with pytest.raises(Killed):  # a checkpoint written for other settings is not resumed from
        run(kill_at=25)
    other_loss, other_F, seen, resumed_wall = run(lr=5e-3)
    assert seen == list(range(40)) and not checkpoint.exists() and resumed_wall == 0
    fresh_loss, fresh_F, _, _ = run(lr=5e-3)
    assert other_loss == fresh_loss and np.array_equal(other_F, fresh_F)
