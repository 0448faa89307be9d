"""DiffTRe end to end through ``bead_campaign.train``: the (phi, psi) histogram target taken from
the frames, persistent CG MD in torch, reweighting between updates and re-simulation on the
N_eff rule. The stand-in for alanine's mapped FG data is a bead chain drawn exactly from a
potential whose (phi, psi) marginal is ``exp(-beta [U_phi + U_psi])``: the Jacobian of a chain's
internal coordinates does not depend on its dihedrals, whatever its bonds and angles do. So a
model that holds that dihedral term reproduces the target histogram only at the true
coefficients, and DiffTRe, which sees nothing but the histogram, must find them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.models.priors import bond_angles, bond_lengths, dihedral_angles
from cgflow.training.bead_campaign import KB, PHI_BEADS, PSI_BEADS, train

T = 300.0
kT = KB * T
CHAIN = (1, 3, 4, 6, 8)  # the beads phi (1, 3, 4, 6) and psi (3, 4, 6, 8) are made of
B0, KB_BOND = 0.15, 5.0e4  # nm, kJ/mol/nm^2
A0, KA = 1.95, 100.0  # rad, kJ/mol/rad^2
TRUE = {"phi": (3.0, 4.0), "psi": (-4.0, 2.0)}  # (a, b) of a cos + b sin, kJ/mol


class DihedralChain(torch.nn.Module):
    """Fixed harmonic bonds and angles along CHAIN plus ``a cos + b sin`` of phi and of psi, the
    four coefficients learned; the other five beads feel nothing (the observable ignores them)."""

    def __init__(self, phi=(0.0, 0.0), psi=(0.0, 0.0)) -> None:
        super().__init__()
        self.coef = torch.nn.Parameter(torch.tensor([*phi, *psi], dtype=torch.float64))
        self.bonds = torch.as_tensor(list(zip(CHAIN[:-1], CHAIN[1:])))
        self.angles = torch.as_tensor(list(zip(CHAIN[:-2], CHAIN[1:-1], CHAIN[2:])))
        self.dihedrals = torch.as_tensor([PHI_BEADS, PSI_BEADS])

    def forward(self, x):
        u = 0.5 * KB_BOND * ((bond_lengths(x, self.bonds) - B0) ** 2).sum(-1)
        u = u + 0.5 * KA * ((bond_angles(x, self.angles) - A0) ** 2).sum(-1)
        d = dihedral_angles(x, self.dihedrals)
        c = self.coef.to(x.dtype)
        return u + c[0] * torch.cos(d[..., 0]) + c[1] * torch.sin(d[..., 0]) \
            + c[2] * torch.cos(d[..., 1]) + c[3] * torch.sin(d[..., 1])


def _draw(grid, density, n, rng):
    cdf = np.cumsum(density)
    return np.interp(rng.random(n) * cdf[-1], cdf, grid)


def _place(A, B, C, b, t, p):
    """The bead bonded to C at length b, angle B-C-new t and dihedral A-B-C-new p (NeRF)."""
    bc = (C - B) / np.linalg.norm(C - B, axis=1, keepdims=True)
    nrm = np.cross(B - A, bc)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    m = np.cross(nrm, bc)
    return C + (-b * np.cos(t))[:, None] * bc + (b * np.sin(t) * np.cos(p))[:, None] * m \
        + (b * np.sin(t) * np.sin(p))[:, None] * nrm


def _chain_frames(n: int, rng) -> np.ndarray:
    """Exact Boltzmann draws of DihedralChain at TRUE: bonds, angles and dihedrals independently
    by inverse CDF (Jacobian r^2 and sin(theta)), built bead by bead; (n, 10, 3) nm."""
    r = np.linspace(0.10, 0.20, 20_001)
    th = np.linspace(1e-3, np.pi - 1e-3, 20_001)
    ph = np.linspace(-np.pi, np.pi, 20_001)
    bond = r**2 * np.exp(-0.5 * KB_BOND * (r - B0) ** 2 / kT)
    angle = np.sin(th) * np.exp(-0.5 * KA * (th - A0) ** 2 / kT)
    dih = {k: np.exp(-(a * np.cos(ph) + b * np.sin(ph)) / kT) for k, (a, b) in TRUE.items()}
    x = rng.normal(scale=0.3, size=(n, 10, 3))  # the beads outside CHAIN
    u = rng.normal(size=(n, 3))
    x[:, CHAIN[1]] = x[:, CHAIN[0]] + _draw(r, bond, n, rng)[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)
    # the third bead's plane is random: a uniform dihedral about a random point off the first bond
    for k, density in ((2, np.ones_like(ph)), (3, dih["phi"]), (4, dih["psi"])):
        A = x[:, CHAIN[k - 3]] if k > 2 else rng.normal(size=(n, 3))
        x[:, CHAIN[k]] = _place(A, x[:, CHAIN[k - 2]], x[:, CHAIN[k - 1]], _draw(r, bond, n, rng),
                                _draw(th, angle, n, rng), _draw(ph, density, n, rng))
    return x


def _cfg() -> dict:
    return {"re": {"lr": 0.1, "epochs": 120, "sim_steps": 400, "replicas": 512, "report_interval": 20,
                   "equilibration": 200, "max_reuse": 10},
            "md": {"timestep": 0.002, "friction": 5.0, "precision": "float64", "compile": False, "device": "cpu"},
            "n_eff_threshold": 0.9}


def test_chain_frames_have_the_dihedral_marginals_they_were_drawn_with():
    x = _chain_frames(20_000, np.random.default_rng(1))
    d = dihedral_angles(torch.as_tensor(x), torch.as_tensor([PHI_BEADS, PSI_BEADS])).numpy()
    for k, (a, b) in enumerate(TRUE.values()):
        # <cos> and <sin> of exp(-(a cos + b sin)/kT) by quadrature
        ph = np.linspace(-np.pi, np.pi, 100_001)
        p = np.exp(-(a * np.cos(ph) + b * np.sin(ph)) / kT)
        for f in (np.cos, np.sin):
            assert f(d[:, k]).mean() == pytest.approx((f(ph) * p).sum() / p.sum(), abs=0.015)


def test_difftre_recovers_the_dihedral_coefficients_from_the_phipsi_histogram():
    rng = np.random.default_rng(7)
    x = _chain_frames(20_000, rng)
    data = {"x": x, "f": np.zeros_like(x), "masses": np.full(10, 12.0), "temperature": T}
    model = DihedralChain()
    (trainer,) = train("difftre", model, data, _cfg(), seed=3)

    learned = model.coef.detach().numpy()
    expected = np.array([*TRUE["phi"], *TRUE["psi"]])
    assert np.abs(learned - expected).max() < 0.5, (learned, expected)  # kJ/mol, 0.2 kT
    assert trainer.samples.n_simulations > 1


def test_a_killed_difftre_run_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    """As relative entropy's: the checkpoint holds the CG samples, their reuse count and the
    replicas' random stream, so the resumed run repeats the uninterrupted one's updates."""
    from cgflow.training.trainer import Trainer
    from tests.conftest import Killed

    x = _chain_frames(2_000, np.random.default_rng(7))
    data = {"x": x, "f": np.zeros_like(x), "masses": np.full(10, 12.0), "temperature": T}
    cfg = _cfg()
    cfg["re"].update(epochs=10, replicas=32, sim_steps=60, equilibration=20, max_reuse=4)

    def run(checkpoint=None):
        model = DihedralChain()
        train("difftre", model, data, cfg, checkpoint=checkpoint, seed=3, signature="s")
        return model.coef.detach().clone()

    straight = run()
    save = Trainer._save

    def save_then_die(self):
        save(self)
        if len(self.history) == 6:  # between two re-simulations: the samples' state matters
            raise Killed

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "model.pt")
    monkeypatch.undo()
    assert torch.equal(run(tmp_path / "model.pt"), straight)
