"""A tabulated, isotropic pair potential for one-bead-type fluids (the IBI / DiffTRe model).

``U(r) = sum_{i<j} u(|r_ij|)`` with ``u`` linear between table nodes ``r_k`` (nm) and zero
beyond the last node (the cutoff); below the first node ``u`` continues with the first
segment's slope, so an unsampled core stays repulsive. Positions are (R, N, 3) nm in a cubic
periodic box (minimum image). The table values (kJ/mol) are the trainable parameters.
"""

from __future__ import annotations

import torch


def pair_distances(x: torch.Tensor, box: float | None) -> torch.Tensor:
    """Distances of all pairs i<j: (R, N, 3) -> (R, N(N-1)/2), minimum image when ``box`` is set."""
    n = x.shape[-2]
    i, j = torch.triu_indices(n, n, 1, device=x.device)
    d = x[..., j, :] - x[..., i, :]
    if box is not None:
        d = d - box * torch.round(d / box)
    return torch.sqrt((d * d).sum(-1) + 1e-12)


class TabulatedPair(torch.nn.Module):
    def __init__(self, r_nodes, values, box: float | None = None) -> None:
        super().__init__()
        self.register_buffer("r", torch.as_tensor(r_nodes, dtype=torch.float64))
        self.u = torch.nn.Parameter(torch.as_tensor(values, dtype=torch.float64).clone())
        self.box = box

    @property
    def r_cut(self) -> float:
        return float(self.r[-1])

    def pair(self, r: torch.Tensor) -> torch.Tensor:
        """u(r) in kJ/mol (zero at and beyond the cutoff; the last table value is pinned to 0)."""
        u = torch.cat([self.u[:-1], self.u.new_zeros(1)])
        dr = self.r[1] - self.r[0]
        t = (r - self.r[0]) / dr
        k = torch.clamp(t.floor().long(), 0, len(self.r) - 2)
        frac = t - k.to(t.dtype)  # may be < 0 below the table: linear extrapolation
        val = u[k] + frac * (u[k + 1] - u[k])
        return torch.where(r < self.r_cut, val, torch.zeros_like(val))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair(pair_distances(x, self.box)).sum(-1)


def boltzmann_inversion(r_nodes, g, kT: float, g_min: float = 1e-3):
    """``-kT ln g`` on the table, with the core (g < g_min) extrapolated by the first sampled slope (steepened)."""
    import numpy as np

    g = np.asarray(g, dtype=float)
    ok = g > g_min
    u = np.where(ok, -kT * np.log(np.maximum(g, g_min)), 0.0)
    first = int(np.argmax(ok))
    slope = min((u[first + 1] - u[first]) / (r_nodes[first + 1] - r_nodes[first]), -10 * kT / 0.01)
    u[:first] = u[first] + slope * (np.asarray(r_nodes[:first]) - r_nodes[first])
    return u - u[-1]
