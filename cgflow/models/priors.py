"""Physical priors of a bead model, fitted from FG statistics (delta learning, METHODS §3).

Harmonic bonds and angles (``k = kT / var``, ``x0 = mean`` of the mapped FG data), cosine
series dihedrals (least squares on the Boltzmann-inverted histogram, 3 harmonics), and a
repulsive ``eps (sigma/r)^12`` on bead pairs more than two bonds apart with ``sigma`` just
below the closest FG approach. The prior keeps CG MD physical where there is no data; the
neural correction learns the rest. Energies kJ/mol, nm, radians.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


def angles_from_bonds(bonds, n):
    nb = {i: set() for i in range(n)}
    for a, b in bonds:
        nb[a].add(b)
        nb[b].add(a)
    angles = sorted({(a, c, b) if a < b else (b, c, a) for c in range(n) for a, b in itertools.combinations(sorted(nb[c]), 2)})
    dihedrals = set()
    for b, c in bonds:
        for a in nb[b] - {c}:
            for d in nb[c] - {b, a}:
                q = (a, b, c, d)
                dihedrals.add(min(q, q[::-1]))
    return nb, angles, sorted(dihedrals)


def bond_lengths(x, idx):
    return torch.linalg.norm(x[..., idx[:, 1], :] - x[..., idx[:, 0], :], dim=-1)


def bond_angles(x, idx):
    u = x[..., idx[:, 0], :] - x[..., idx[:, 1], :]
    v = x[..., idx[:, 2], :] - x[..., idx[:, 1], :]
    cos = (u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1))
    return torch.acos(torch.clamp(cos, -1 + 1e-7, 1 - 1e-7))


def dihedral_angles(x, idx):
    p0, p1, p2, p3 = (x[..., idx[:, k], :] for k in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    c1, c2 = torch.cross(b2, b3, dim=-1), torch.cross(b1, b2, dim=-1)
    return torch.atan2((b1 * c1).sum(-1) * torch.linalg.norm(b2, dim=-1), (c1 * c2).sum(-1))


class Prior(torch.nn.Module):
    """Sum of the fitted bonded terms and the r^-12 repulsion; parameters are buffers (not trained)."""

    def __init__(self, bonds, angles, dihedrals, pairs, params: dict) -> None:
        super().__init__()
        for name, val in (("bonds", bonds), ("angles", angles), ("dihedrals", dihedrals), ("pairs", pairs)):
            self.register_buffer(name, torch.as_tensor(np.asarray(val, dtype=np.int64).reshape(-1, {"bonds": 2, "angles": 3, "dihedrals": 4, "pairs": 2}[name])))
        for k, v in params.items():
            self.register_buffer(k, torch.as_tensor(np.asarray(v), dtype=torch.float64))

    @classmethod
    def fit(cls, x_fg: np.ndarray, bonds, kT: float, n_harmonics: int = 3, eps: float | None = None,
            weights: np.ndarray | None = None, terms=("bonds", "angles", "dihedrals", "repulsion")) -> "Prior":
        """Fit to mapped FG bead positions (n_frames, n_beads, 3) nm with frame ``weights`` (bias undone)."""
        n = x_fg.shape[1]
        x = torch.as_tensor(x_fg, dtype=torch.float64)
        w = np.full(len(x_fg), 1 / len(x_fg)) if weights is None else np.asarray(weights) / np.sum(weights)
        _, angles, dihedrals = angles_from_bonds(bonds, n)
        excluded = set(map(tuple, bonds)) | {(a, b) for a, _, b in angles}
        pairs = [p for p in itertools.combinations(range(n), 2) if p not in excluded]
        bonds = np.asarray(bonds).reshape(-1, 2)
        angles = np.asarray(angles).reshape(-1, 3)
        dihedrals = np.asarray(dihedrals).reshape(-1, 4)
        p = {}

        def harmonic(values):
            v = values.numpy()
            mean = w @ v
            var = w @ (v - mean) ** 2
            return mean, kT / var

        p["b0"], p["kb"] = harmonic(bond_lengths(x, torch.as_tensor(bonds))) if "bonds" in terms else (np.zeros(len(bonds)), np.zeros(len(bonds)))
        p["a0"], p["ka"] = harmonic(bond_angles(x, torch.as_tensor(angles))) if "angles" in terms else (np.zeros(len(angles)), np.zeros(len(angles)))
        coef = np.zeros((len(dihedrals), 2 * n_harmonics))
        p["d0"], p["kd"] = np.zeros(len(dihedrals)), np.zeros(len(dihedrals))
        if "dihedrals" in terms and len(dihedrals):
            phi = dihedral_angles(x, torch.as_tensor(dihedrals)).numpy()
            edges = np.linspace(-np.pi, np.pi, 37)
            centres = 0.5 * (edges[1:] + edges[:-1])
            basis = np.concatenate([np.cos(np.outer(centres, np.arange(1, n_harmonics + 1))),
                                    np.sin(np.outer(centres, np.arange(1, n_harmonics + 1)))], axis=1)
            for k in range(len(dihedrals)):
                hist, _ = np.histogram(phi[:, k], edges, weights=w, density=True)
                ok = hist > 0
                if ok.sum() < 2 * n_harmonics + 6:  # narrow (planar, e.g. omega): harmonic about the circular mean
                    mean = np.arctan2(w @ np.sin(phi[:, k]), w @ np.cos(phi[:, k]))
                    dev = np.angle(np.exp(1j * (phi[:, k] - mean)))
                    p["d0"][k], p["kd"][k] = mean, kT / (w @ dev**2)
                    continue
                f = -kT * np.log(hist[ok])
                # weight bins by counts so poorly sampled bins do not dominate
                sw = np.sqrt(hist[ok])
                A = np.concatenate([basis[ok], np.ones((ok.sum(), 1))], axis=1)
                sol, *_ = np.linalg.lstsq(A * sw[:, None], f * sw, rcond=None)
                coef[k] = sol[:-1]
        p["dih"] = coef
        if "repulsion" in terms and pairs:
            d = bond_lengths(x, torch.as_tensor(np.asarray(pairs))).numpy()
            p["sigma"] = 0.9 * d.min(axis=0)
            p["eps_rep"] = np.full(len(pairs), kT if eps is None else eps)
        else:
            p["sigma"], p["eps_rep"] = np.ones(len(pairs)), np.zeros(len(pairs))
        return cls(bonds, angles, dihedrals, pairs, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = x.new_zeros(x.shape[:-2])
        if len(self.bonds):
            e = e + 0.5 * (self.kb * (bond_lengths(x, self.bonds) - self.b0) ** 2).sum(-1)
        if len(self.angles):
            e = e + 0.5 * (self.ka * (bond_angles(x, self.angles) - self.a0) ** 2).sum(-1)
        if len(self.dihedrals):
            phi = dihedral_angles(x, self.dihedrals)
            m = self.dih.shape[1] // 2
            n = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
            e = e + (self.dih[:, :m] * torch.cos(phi[..., None] * n)).sum((-1, -2)) \
                  + (self.dih[:, m:] * torch.sin(phi[..., None] * n)).sum((-1, -2))
            dev = torch.atan2(torch.sin(phi - self.d0), torch.cos(phi - self.d0))
            e = e + 0.5 * (self.kd * dev**2).sum(-1)
        if len(self.pairs):
            e = e + (self.eps_rep * (self.sigma / bond_lengths(x, self.pairs)) ** 12).sum(-1)
        return e
