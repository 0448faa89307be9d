"""Cycle coarse graining on toys: the flow-only free energy against independent quadrature.

The flows are trained by reverse KL with x drawn uniformly over [-2, 2] nm: no FG trajectory
exists at all, so nothing ever crosses the 10 kT barrier. The exact PMF here is this file's
own: scipy quadrature over y of exp(-U/kT), with U written out in numpy (not the package's
expression parser or its quadrature).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from cgflow.systems.toy import BUILTINS, CV, KB, ToySystem

torch.set_num_threads(1)

KT = KB * 300.0
BOX = {"x": (-2.0, 2.0), "y": (-2.0, 2.0)}
GRID = np.linspace(-1.9, 1.9, 39)
STEPS = 400  # ~5 s per flow on one core


def dw2d(x, y):
    """double_well_2d: 25 (x²-1)² + 10 (1 + x²/2) y²: y's width depends on x (entropic PMF part)."""
    return 25 * (x**2 - 1) ** 2 + 10 * (1 + 0.5 * x**2) * y**2


def banana(x, y):
    """y's mean (x²/2) and width both follow x: a flow that ignored its context would have to
    spread over y in [0, 2] and lose most of its effective samples."""
    return 25 * (x**2 - 1) ** 2 + 10 * (1 + x**2) * (y - 0.5 * x**2) ** 2


TOYS = {
    "double_well_2d": (dw2d, BUILTINS["double_well_2d"].energy, BOX),
    "banana": (banana, "25*(x^2-1)^2 + 10*(1+x^2)*(y-0.5*x^2)^2", {"x": (-2.0, 2.0), "y": (-2.0, 3.0)}),
}


def quadrature_F(U, x: float, box) -> float:
    """-kT ln Integral exp(-U(x, y)/kT) dy over the box's y range, kJ/mol (absolute)."""
    lo, hi = box["y"]
    val, _ = quad(lambda y: np.exp(-U(x, y) / KT), lo, hi, epsabs=0, epsrel=1e-11, limit=200,
                  points=[0.0, 0.5 * x**2])
    return -KT * np.log(val)


def quadrature_moments(U, x: float, box) -> tuple[float, float]:
    """Mean and standard deviation of y given x under exp(-U/kT)."""
    lo, hi = box["y"]
    z = quad(lambda y: np.exp(-U(x, y) / KT), lo, hi, epsrel=1e-11, limit=200)[0]
    m1 = quad(lambda y: y * np.exp(-U(x, y) / KT), lo, hi, epsrel=1e-11, limit=200)[0] / z
    m2 = quad(lambda y: y * y * np.exp(-U(x, y) / KT), lo, hi, epsrel=1e-11, limit=200)[0] / z
    return m1, np.sqrt(m2 - m1 * m1)


def make_flow(y_loc=0.0, y_scale=1.0, seed=0):
    from cgflow.reconstruction.flow import ConditionalFlow

    torch.manual_seed(seed)
    return ConditionalFlow(1, 1, transforms=3, hidden=(64, 64), bins=8, y_loc=y_loc, y_scale=y_scale,
                           s_loc=0.0, s_scale=4 / np.sqrt(12))


@pytest.fixture(scope="module", params=list(TOYS))
def trained(request):
    """(name, numpy U, box, ToyEnergy, trained flow, training result) per toy."""
    from cgflow.reconstruction.energy import ToyEnergy
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train

    U, text, box = TOYS[request.param]
    energy = ToyEnergy(ToySystem(text, (CV("x", "x"),), box), KT)
    flow = make_flow(y_loc=0.5 * sum(box["y"]), y_scale=(box["y"][1] - box["y"][0]) / 4)
    result = train(flow, energy, Conditioning.uniform(-2.0, 2.0), TrainSettings(steps=STEPS, batch=256, seed=2), KT)
    return request.param, U, box, energy, flow, result


def estimate(flow, energy, grid=GRID, samples=2000, **kw):
    from cgflow.reconstruction.free_energy import EstimateSettings, ccg_free_energy

    return ccg_free_energy(flow, energy, grid[:, None], KT, EstimateSettings(samples_per_point=samples, seed=3, **kw), ["x"])


def test_ccg_free_energy_matches_quadrature_without_crossing_the_barrier(trained):
    name, U, box, energy, flow, result = trained
    frame = estimate(flow, energy)
    exact = np.array([quadrature_F(U, x, box) for x in GRID])
    exact -= exact.min()
    region = exact < 6 * KT
    assert region.sum() >= 15 and (exact > 9.5 * KT).any()  # both wells and the barrier top are on the grid
    assert frame.loc[region, "trusted"].all(), frame[["x", "ess_fraction"]]
    F = frame["F_kJmol"].to_numpy()
    assert frame["F_kJmol"].notna().all() and frame.loc[frame.trusted, "F_kJmol"].min() == 0.0
    diff = F - exact
    err = np.abs(diff - diff[np.argmin(exact)]) / KT  # both zeroed at the exact minimum
    assert err[region].max() < 0.25, (name, err[region].max())
    # the barrier top (~10 kT) comes out as well as the wells: no rare event is needed
    assert err[exact < 12 * KT].max() < 0.25, (name, err[exact < 12 * KT].max())
    # a good fit: most weights effective wherever the PMF is low
    assert frame.loc[region, "ess_fraction"].min() > 0.5
    assert result["energy_evaluations"] == STEPS * 256
    print(f"\n{name}: max |dF| {err[region].max():.4f} kT over {region.sum()} points with F < 6 kT; "
          f"ESS/M min {frame.ess_fraction.min():.3f}; training {result['wall_s']:.1f} s")


def test_flow_follows_its_context(trained):
    """The conditional samples have the exact conditional mean and width at each x."""
    name, U, box, energy, flow, _ = trained
    torch.manual_seed(4)
    for x in (-1.5, -1.0, 0.0, 0.7, 1.5):
        with torch.no_grad():
            y, _ = flow.rsample_and_log_prob(torch.tensor([[x]], dtype=torch.float64), n=4000)
        mean, std = quadrature_moments(U, x, box)
        y = y[:, 0, 0].numpy()
        assert abs(y.mean() - mean) < 0.15 * std + 0.01, (name, x, y.mean(), mean)
        assert abs(y.std() / std - 1) < 0.15, (name, x, y.std(), std)


def test_mean_force_matches_finite_difference_of_quadrature(trained):
    name, U, box, energy, flow, _ = trained
    frame = estimate(flow, energy, samples=2000, bootstrap=100)
    h = 1e-4
    fd = np.array([(quadrature_F(U, x + h, box) - quadrature_F(U, x - h, box)) / (2 * h) for x in GRID])
    exact = np.array([quadrature_F(U, x, box) for x in GRID])
    region = exact - exact.min() < 6 * KT
    force = frame["mean_force_kJmol_nm"].to_numpy()
    err = np.abs(force - fd)[region]
    z = err / frame["mean_force_err_kJmol_nm"].to_numpy()[region]
    print(f"\n{name}: mean force max |error| {err.max():.3f} kJ/mol/nm (peak |dF/dx| {np.abs(fd[region]).max():.1f}), "
          f"max z {z.max():.2f}")
    # forces reach ~40 kJ/mol/nm in the region: agreement to 2% of that, and within the bootstrap errors
    assert np.abs(fd[region]).max() > 30
    assert err.max() < 0.02 * np.abs(fd[region]).max(), (name, err.max())
    assert z.max() < 4.5, (name, z.max())


@pytest.mark.parametrize("kind", ["untrained, offset and narrow", "trained, 5x too narrow"])
def test_bad_reconstruction_is_flagged_untrusted_not_averaged(trained, kind):
    from cgflow.reconstruction.flow import ConditionalFlow
    from cgflow.reconstruction.free_energy import compare_to_exact

    name, U, box, energy, flow, _ = trained
    if kind.startswith("untrained"):
        bad = make_flow(y_loc=box["y"][1] - 0.5, y_scale=0.05)
    else:
        bad = ConditionalFlow(**flow.config())
        bad.load_state_dict(flow.state_dict())
        bad.y_scale *= 0.2  # the trained shape, squeezed 5x toward the box centre in y
    frame = estimate(bad, energy)
    exact_abs = np.array([quadrature_F(U, x, box) for x in GRID])
    region = exact_abs - exact_abs.min() < 6 * KT
    assert not frame.isna().any().any()  # numbers are written for every point ...
    assert (~frame.trusted[region]).mean() > 0.5  # ... but most are flagged
    assert frame.loc[~frame.trusted, "ess_fraction"].max() < 0.2
    # every point that is off by more than 0.25 kT (absolute F, no shift) is flagged untrusted
    F_abs = frame["F_kJmol"].to_numpy() + frame.attrs["F_offset_kJmol"]
    wrong = np.abs(F_abs - exact_abs) > 0.25 * KT
    assert wrong[region].sum() >= 5  # the reconstruction really is bad
    assert not (wrong & frame.trusted.to_numpy()).any(), frame[wrong & frame.trusted.to_numpy()]
    score = compare_to_exact(frame, exact_abs, KT)
    assert score["n_untrusted_in_region"] == int((~frame.trusted[region]).sum()) > 0
    assert score["n_compared"] == int(frame.trusted[region].sum())


def test_training_is_seeded_and_resumes_from_its_checkpoint(tmp_path):
    """A run killed after its first checkpoint resumes there and ends with the same flow."""
    from cgflow.reconstruction.energy import ToyEnergy
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train

    toy = ToySystem(BUILTINS["double_well_2d"].energy, (CV("x", "x"),), BOX)
    settings = TrainSettings(steps=30, batch=64, checkpoint_interval=10, log_interval=10, seed=5)
    cond = Conditioning.uniform(-2.0, 2.0)

    straight = make_flow()
    train(straight, ToyEnergy(toy, KT), cond, settings, KT)

    class Killed(Exception):
        pass

    class DiesAtStep25(ToyEnergy):
        def training_energy(self, s, y):
            if self.evaluations >= 25 * 64:
                raise Killed
            return super().training_energy(s, y)

    ckpt = tmp_path / "flow.checkpoint.pt"
    with pytest.raises(Killed):
        train(make_flow(), DiesAtStep25(toy, KT), cond, settings, KT, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["step"] == 20
    resumed = make_flow(seed=99)  # other initial weights: the checkpoint must replace them
    result = train(resumed, ToyEnergy(toy, KT), cond, settings, KT, checkpoint=ckpt)
    assert result["resumed_at"] == 20 and result["energy_evaluations"] == 30 * 64
    assert not ckpt.exists()
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert [h["step"] for h in result["history"]] == [10, 20, 30]


def test_flow_save_load_round_trip(tmp_path):
    from cgflow.reconstruction.flow import load_flow, save_flow

    flow = make_flow(y_loc=0.3, y_scale=0.7)
    save_flow(flow, tmp_path / "flow.pt", tmp_path / "flow.json", {"note": "test"})
    loaded, info = load_flow(tmp_path / "flow.pt", tmp_path / "flow.json")
    assert info["note"] == "test" and info["flow"]["transforms"] == 3
    y = torch.randn(7, 1, dtype=torch.float64)
    s = torch.rand(7, 1, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(y, s), loaded.log_prob(y, s))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.json", "flow.pt"]  # no temporary files left


def test_forward_nll_and_samples_conditioning():
    """With (s, y) data, the NLL term trains too, and conditioning values come from the data only."""
    from cgflow.reconstruction.energy import ToyEnergy
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train

    rng = np.random.default_rng(0)
    s = rng.choice([-1.0, 1.0], size=500) + 0.05 * rng.normal(size=500)
    y = rng.normal(0.0, np.sqrt(KT / (2 * 10 * (1 + 0.5 * s**2))))
    cond = Conditioning.from_samples(s)
    torch.manual_seed(0)
    drawn = cond.draw(1000).numpy()
    assert np.isin(drawn[:, 0], s).all()
    energy = ToyEnergy(ToySystem(BUILTINS["double_well_2d"].energy, (CV("x", "x"),), BOX), KT)
    flow = make_flow()
    result = train(flow, energy, cond, TrainSettings(steps=60, batch=64, nll_weight=1.0, log_interval=20, seed=1),
                   KT, nll_data=(s, y))
    nll = [h["nll"] for h in result["history"]]
    assert nll[-1] < nll[0]
    with pytest.raises(ValueError, match="nll_weight"):
        train(flow, energy, cond, TrainSettings(steps=1, nll_weight=1.0), KT)
