"""Neural corrections on invariant features and the full bead potential ``U = prior + net``.

The correction is swappable by name (``NETWORKS``):
- ``pair_mlp``: all bead-pair distances expanded in Gaussian radial basis functions, plus
  (cos, sin) of the listed dihedrals (rotation-invariant; dihedrals carry chirality), into an
  MLP. Small and fast, which CG MD needs.
- ``schnet``: a SchNet-style continuous-filter convolution over bead types (2 interactions).
- ``none``: zero (prior only).
Energies kJ/mol, positions (..., n_beads, 3) nm.
"""

from __future__ import annotations

import itertools
import math

import torch

from cgflow.models.priors import dihedral_angles
from cgflow.models.tabulated_pair import pair_distances


def rbf(d: torch.Tensor, n: int, r_max: float) -> torch.Tensor:
    centres = torch.linspace(0.0, r_max, n, dtype=d.dtype, device=d.device)
    width = r_max / n
    return torch.exp(-((d[..., None] - centres) / width) ** 2 / 2)


class PairMLP(torch.nn.Module):
    def __init__(self, n_beads: int, dihedrals=(), n_rbf: int = 16, r_max: float = 0.8, hidden=(64, 64), **_) -> None:
        super().__init__()
        self.n_rbf, self.r_max = n_rbf, r_max
        self.register_buffer("dihedrals", torch.as_tensor(list(dihedrals), dtype=torch.long).reshape(-1, 4))
        n_in = n_beads * (n_beads - 1) // 2 * n_rbf + 2 * len(self.dihedrals)
        layers, width = [], n_in
        for h in hidden:
            layers += [torch.nn.Linear(width, h, dtype=torch.float64), torch.nn.SiLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1, dtype=torch.float64))
        self.mlp = torch.nn.Sequential(*layers)
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = rbf(pair_distances(x, None), self.n_rbf, self.r_max).flatten(-2)
        if len(self.dihedrals):
            phi = dihedral_angles(x, self.dihedrals)
            f = torch.cat([f, torch.cos(phi), torch.sin(phi)], -1)
        return self.mlp(f).squeeze(-1)


class SchNet(torch.nn.Module):
    def __init__(self, n_beads: int, bead_types=(), n_types: int = 1, n_rbf: int = 16, r_max: float = 0.8,
                 width: int = 32, n_interactions: int = 2, **_) -> None:
        super().__init__()
        self.n_rbf, self.r_max = n_rbf, r_max
        types = list(bead_types) or [0] * n_beads
        self.register_buffer("types", torch.as_tensor(types, dtype=torch.long))
        self.embed = torch.nn.Embedding(max(n_types, max(types) + 1), width, dtype=torch.float64)
        self.filters = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(n_rbf, width, dtype=torch.float64), torch.nn.SiLU(),
                                                               torch.nn.Linear(width, width, dtype=torch.float64))
                                           for _ in range(n_interactions))
        self.updates = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, width, dtype=torch.float64), torch.nn.SiLU(),
                                                               torch.nn.Linear(width, width, dtype=torch.float64))
                                           for _ in range(n_interactions))
        self.out = torch.nn.Linear(width, 1, dtype=torch.float64)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        d = torch.linalg.norm(x[..., :, None, :] - x[..., None, :, :] + eye[..., None], dim=-1)
        cut = 0.5 * (torch.cos(math.pi * torch.clamp(d / self.r_max, max=1.0)) + 1) * (1 - eye)
        e = rbf(d, self.n_rbf, self.r_max)
        h = self.embed(self.types).expand(*x.shape[:-2], n, -1)
        for filt, upd in zip(self.filters, self.updates):
            msg = (filt(e) * cut[..., None] * h[..., None, :, :]).sum(-2)
            h = h + upd(msg)
        return self.out(h).sum((-1, -2))


class Zero(torch.nn.Module):
    def __init__(self, *_, **__) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-2])


NETWORKS = {"pair_mlp": PairMLP, "schnet": SchNet, "none": Zero}


def make_network(name: str, **kwargs) -> torch.nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"Unknown CG network {name!r}: choose one of {', '.join(NETWORKS)}.")
    return NETWORKS[name](**kwargs)


class BeadPotential(torch.nn.Module):
    """``U(x) = prior(x) + net(x)``; only the network is trained."""

    def __init__(self, prior: torch.nn.Module, net: torch.nn.Module) -> None:
        super().__init__()
        self.prior, self.net = prior, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior(x) + self.net(x)


def all_pairs(n: int):
    return list(itertools.combinations(range(n), 2))
