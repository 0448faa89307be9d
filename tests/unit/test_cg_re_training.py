"""Relative-entropy training end to end through ``bead_campaign.train``: persistent CG MD in
torch, reweighting between updates, re-simulation (N_eff rule and reuse cap) and, for biased FG data, the
frames' unbiased weights. A harmonic dimer whose exact Boltzmann samples stand in for the mapped
FG data must be recovered from a wrong start, because the relative entropy's minimum over a
model family that holds the truth is the truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.training.bead_campaign import KB, train
from tests.conftest import Killed

T = 300.0
kT = KB * T
K_TRUE, R0_TRUE = 2000.0, 0.30  # kJ/mol/nm^2, nm
BIAS_SLOPE = -40.0  # kJ/mol/nm: a linear bias on r that stretches the biased frames by ~0.02 nm


class HarmonicDimer(torch.nn.Module):
    """U = k/2 (r - r0)^2 on x (R, 2, 3) nm; k by its log and r0 in Angstrom so that one Adam
    step size suits both."""

    def __init__(self, k: float, r0: float) -> None:
        super().__init__()
        self.log_k = torch.nn.Parameter(torch.tensor(np.log(k), dtype=torch.float64))
        self.r0_angstrom = torch.nn.Parameter(torch.tensor(10 * r0, dtype=torch.float64))

    def forward(self, x):
        r = torch.linalg.norm(x[..., 1, :] - x[..., 0, :], dim=-1)
        return 0.5 * torch.exp(self.log_k) * (r - self.r0_angstrom / 10) ** 2


def _dimer_frames(n: int, bias_slope: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Exact draws of r from r^2 exp(-beta (U_true + bias)) by inverse CDF, random orientations;
    returns positions (n, 2, 3) and each frame's bias energy (kJ/mol)."""
    grid = np.linspace(0.05, 0.6, 200_001)
    bias = bias_slope * (grid - R0_TRUE)
    p = grid**2 * np.exp(-(0.5 * K_TRUE * (grid - R0_TRUE) ** 2 + bias) / kT)
    cdf = np.cumsum(p)
    r = np.interp(rng.random(n) * cdf[-1], cdf, grid)
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x0 = rng.normal(scale=0.5, size=(n, 3))
    return np.stack([x0, x0 + r[:, None] * u], axis=1), bias_slope * (r - R0_TRUE)


def _cfg() -> dict:
    # max_reuse above the default 10: fresh samples every 10 updates would shake the last iterate by
    # their own noise, and this test is about the estimator's bias
    return {"re": {"lr": 0.02, "epochs": 150, "sim_steps": 500, "replicas": 1024, "report_interval": 25,
                   "equilibration": 250, "max_reuse": 50},
            "md": {"timestep": 0.002, "friction": 5.0, "precision": "float64", "compile": False, "device": "cpu"},
            "n_eff_threshold": 0.9}


@pytest.mark.parametrize("biased", [False, True], ids=["unbiased-frames", "biased-frames-reweighted"])
def test_relative_entropy_recovers_the_dimer_bond(biased):
    rng = np.random.default_rng(7)
    x, v = _dimer_frames(20_000, BIAS_SLOPE if biased else 0.0, rng)
    r = np.linalg.norm(x[:, 1] - x[:, 0], axis=1)
    data = {"x": x, "f": np.zeros_like(x), "masses": np.array([12.0, 12.0]), "temperature": T}
    if biased:
        w = np.exp((v - v.max()) / kT)
        data["weights"] = w / w.sum()
        # the frames alone mislead: their mean bond is well off the unbiased one
        assert r.mean() - np.average(r, weights=data["weights"]) > 0.01
    model = HarmonicDimer(0.5 * K_TRUE, R0_TRUE + 0.03)
    train("re", model, data, _cfg(), seed=3)

    k, r0 = float(torch.exp(model.log_k.detach())), float(model.r0_angstrom.detach()) / 10
    assert k == pytest.approx(K_TRUE, rel=0.04)  # 2-8 % too stiff without the equilibration segment
    assert r0 == pytest.approx(R0_TRUE, abs=0.004)


def test_a_killed_relative_entropy_run_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    """The checkpoint holds the CG samples, their reuse count and the replicas' random stream:
    a resumed run continues the same trajectory of updates, not a statistically similar one."""
    from cgflow.training.trainer import Trainer

    rng = np.random.default_rng(5)
    x, _ = _dimer_frames(2_000, 0.0, rng)
    data = {"x": x, "f": np.zeros_like(x), "masses": np.array([12.0, 12.0]), "temperature": T}
    cfg = _cfg()
    cfg["re"].update(epochs=12, replicas=64, sim_steps=100, equilibration=50, max_reuse=4)

    def run(checkpoint=None):
        model = HarmonicDimer(0.5 * K_TRUE, R0_TRUE + 0.03)
        train("re", model, data, cfg, checkpoint=checkpoint, seed=3, signature="s")
        return [p.detach().clone() for p in model.parameters()]

    straight = run()
    save = Trainer._save

    def save_then_die(self):
        save(self)
        if len(self.history) == 7:  # mid-way through the samples' reuse: their state matters
            raise Killed

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "model.pt")
    monkeypatch.undo()
    resumed = run(tmp_path / "model.pt")
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
