"""Observables for DiffTRe: per-frame values whose (reweighted) ensemble average is matched.

Each function maps bead positions (n_frames, N, 3) nm to per-frame values (n_frames, K):
a histogram is the average of per-frame normalised counts, so a *weighted* frame average is
the reweighted histogram. Counting uses a smooth (Gaussian) kernel only where a gradient in
positions is wanted; DiffTRe needs gradients through the weights only, so hard counts suffice.
"""

from __future__ import annotations

import math

import torch

from cgflow.models.priors import bond_angles, bond_lengths, dihedral_angles
from cgflow.models.tabulated_pair import pair_distances


def rdf_frames(x: torch.Tensor, edges: torch.Tensor, box: float) -> torch.Tensor:
    """Per-frame g(r) on ``edges`` (nm) of a one-type periodic fluid: (n_frames, n_bins)."""
    n = x.shape[-2]
    d = pair_distances(x, box)
    counts = torch.stack([torch.histc(f, bins=len(edges) - 1, min=float(edges[0]), max=float(edges[-1])) for f in d])
    shell = 4 / 3 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ideal = shell * (n * (n - 1) / 2) / box**3
    return counts / ideal


def histogram_frames(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Per-frame normalised histogram (density) of values (n_frames, M) on edges: (n_frames, n_bins)."""
    idx = torch.bucketize(values.contiguous(), edges) - 1
    n_bins = len(edges) - 1
    ok = (idx >= 0) & (idx < n_bins)
    one_hot = torch.nn.functional.one_hot(idx.clamp(0, n_bins - 1), n_bins).to(values.dtype) * ok[..., None]
    width = edges[1:] - edges[:-1]
    return one_hot.sum(-2) / values.shape[-1] / width


def bond_hist(x, bonds, edges):
    return histogram_frames(bond_lengths(x, bonds), edges)


def angle_hist(x, angles, edges):
    return histogram_frames(bond_angles(x, angles), edges)


def dihedral_hist(x, dihedrals, edges):
    return histogram_frames(dihedral_angles(x, dihedrals), edges)


def phipsi_hist(x, phi_q, psi_q, n_bins: int = 12):
    """Per-frame 2-D (phi, psi) histogram (flattened, density per rad^2)."""
    quads = torch.as_tensor([phi_q, psi_q])
    ang = dihedral_angles(x, quads)
    edges = torch.linspace(-math.pi, math.pi, n_bins + 1, dtype=x.dtype)
    i = (torch.bucketize(ang.contiguous(), edges) - 1).clamp(0, n_bins - 1)
    flat = i[..., 0] * n_bins + i[..., 1]
    w = (2 * math.pi / n_bins) ** 2
    return torch.nn.functional.one_hot(flat, n_bins * n_bins).to(x.dtype) / w


OBSERVABLES = {"rdf": rdf_frames, "bond_hist": bond_hist, "angle_hist": angle_hist,
               "dihedral_hist": dihedral_hist, "phipsi_hist": phipsi_hist}
