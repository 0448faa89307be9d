"""The CV-space CG model of the variational multiscale rounds (METHODS §1): an ensemble of
small neural energies ``U_m(s)`` (kJ/mol) on collective variables, each defining a density
``p_m(s) = exp(-U_m(s)/kT) / Z_m``.

The members are trained on different bootstrap resamples of the FG data (see
:mod:`cgflow.training.max_likelihood`), so they agree where the data pin the free energy down
and disagree where the data are thin. :func:`ensemble_fes` turns the ensemble into a free-energy
surface and that disagreement ``eps(s)``, which switches the bias off where the model is not
trusted. The members live in batched weight tensors, so one matrix product evaluates them all.

A model is stored as one ``cg.pt`` file: the state dict plus a JSON string of metadata that
includes the architecture, so :func:`load` rebuilds the model with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cgflow.io import InputError, reading, write_torch

MODEL_NAME = "CVEnergyEnsemble"
"""The ``model`` entry of a stored architecture; :func:`load` refuses files of other models."""


class CVEnergyEnsemble(nn.Module):
    """``members`` independent MLPs ``U_m(s)`` (kJ/mol) on the CVs of a box [lower, upper].

    Features: a periodic CV enters as (cos θ, sin θ) with θ = 2π s / (upper - lower), which is
    (cos s, sin s) for a dihedral on [-π, π); a non-periodic one as (s - centre) / half_width,
    so [lower, upper] maps to [-1, 1]. Hidden layers use SiLU, which is smooth: the bias forces
    and CG Langevin dynamics differentiate U. Member m is initialised from ``seed`` (like
    :class:`torch.nn.Linear`), independently of torch's global random state.
    """

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        periodic: Sequence[bool],
        hidden: Sequence[int] = (64, 64),
        members: int = 4,
        seed: int = 0,
    ):
        super().__init__()
        if not len(lower) == len(upper) == len(periodic) >= 1:
            raise ValueError("lower, upper and periodic need one entry per CV (at least one CV)")
        if any(not hi > lo for lo, hi in zip(lower, upper)):
            raise ValueError(f"each CV needs upper > lower, got lower={list(lower)} upper={list(upper)}")
        if members < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"members and hidden sizes must be positive, got members={members} hidden={list(hidden)}")
        self.lower = tuple(float(x) for x in lower)
        self.upper = tuple(float(x) for x in upper)
        self.periodic = tuple(bool(p) for p in periodic)
        self.hidden = tuple(int(h) for h in hidden)
        self.members = int(members)
        self.seed = int(seed)

        lo, hi = torch.tensor(self.lower), torch.tensor(self.upper)
        self.register_buffer("_centre", (lo + hi) / 2, persistent=False)
        self.register_buffer("_half_width", (hi - lo) / 2, persistent=False)
        self.register_buffer("_angle_scale", 2 * math.pi / (hi - lo), persistent=False)

        generator = torch.Generator().manual_seed(self.seed)
        sizes = (sum(2 if p else 1 for p in self.periodic), *self.hidden, 1)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(_uniform((self.members, fan_in, fan_out), bound, generator)))
            self.biases.append(nn.Parameter(_uniform((self.members, 1, fan_out), bound, generator)))

    @property
    def dim(self) -> int:
        """Number of CVs."""
        return len(self.periodic)

    @property
    def architecture(self) -> dict:
        """The constructor arguments (JSON-ready) plus the model name: what :func:`load` needs."""
        return {
            "model": MODEL_NAME,
            "lower": list(self.lower),
            "upper": list(self.upper),
            "periodic": list(self.periodic),
            "hidden": list(self.hidden),
            "members": self.members,
            "seed": self.seed,
        }

    def features(self, s: torch.Tensor) -> torch.Tensor:
        """Network inputs for CV values ``s`` (..., d): (cos, sin) per periodic CV, scaled value otherwise."""
        if s.shape[-1] != self.dim:
            raise ValueError(f"expected {self.dim} CV columns, got shape {tuple(s.shape)}")
        parts = []
        for i, periodic in enumerate(self.periodic):
            x = s[..., i]
            if periodic:
                angle = x * self._angle_scale[i]
                parts += [torch.cos(angle), torch.sin(angle)]
            else:
                parts.append((x - self._centre[i]) / self._half_width[i])
        return torch.stack(parts, dim=-1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Energies (kJ/mol), shape (M, n): every member at the same points ``s`` (n, d), or
        member m at its own points ``s[m]`` when ``s`` is (M, n, d) (e.g. its Langevin chains)."""
        x = self.features(s.to(self.weights[0].dtype))
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        elif x.dim() != 3 or x.shape[0] != self.members:
            raise ValueError(f"expected CV values of shape (n, d) or ({self.members}, n, d), got {tuple(s.shape)}")
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = nn.functional.silu(x)
        return x.squeeze(-1)


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    return (2 * torch.rand(shape, generator=generator) - 1) * bound


class Grid:
    """A regular quadrature grid over the CV box, C order (axis i is CV i).

    A non-periodic CV gets the centres of ``n`` equal cells over [lower, upper]. A periodic CV
    gets ``n`` points ``lower + k h`` (k = 0..n-1, h = period/n), i.e. [lower, upper) without the
    duplicate endpoint, each the centre of its (wrapped) cell. Every point stands for one cell
    of volume ``cell_volume``, so sums over ``points`` times ``cell_volume`` are midpoint rules.
    """

    def __init__(
        self, lower: Sequence[float], upper: Sequence[float], periodic: Sequence[bool], n: int | Sequence[int]
    ):
        counts = [int(n)] * len(lower) if np.isscalar(n) else [int(k) for k in n]
        if not len(lower) == len(upper) == len(periodic) == len(counts) or min(counts) < 1:
            raise ValueError("a grid needs lower, upper, periodic and a positive point count for each CV")
        steps = [(hi - lo) / k for lo, hi, k in zip(lower, upper, counts)]
        self.axes = tuple(
            lo + h * (np.arange(k) if p else np.arange(k) + 0.5) for lo, h, p, k in zip(lower, steps, periodic, counts)
        )
        self.shape = tuple(counts)
        self.cell_volume = float(np.prod(steps))
        mesh = np.meshgrid(*self.axes, indexing="ij")
        self.points = np.stack([m.ravel() for m in mesh], axis=-1).astype(np.float64)


def free_energies(model: CVEnergyEnsemble, grid: Grid, kT: float) -> np.ndarray:
    """Each member's normalised free energy on the grid, shape (M, *grid.shape), kJ/mol.

    ``F_m = U_m + kT ln Z_m`` with ``Z_m = Σ_grid exp(-U_m/kT) cell_volume``, i.e.
    ``F_m = -kT ln p_m``: the arbitrary constant of each network is removed, so the members
    can be compared point by point.
    """
    return free_energies_at(model, grid, kT, grid.points).reshape(model.members, *grid.shape)


def free_energies_at(model: CVEnergyEnsemble, grid: Grid, kT: float, points: np.ndarray) -> np.ndarray:
    """Each member's normalised free energy (as in :func:`free_energies`, ``Z_m`` from ``grid``)
    at arbitrary CV values ``points`` (n, d), e.g. FG samples or bias-grid nodes; shape (M, n), kJ/mol."""
    from scipy.special import logsumexp

    U_grid = _energies(model, grid.points)
    ln_Z = logsumexp(-U_grid / kT, axis=1) + np.log(grid.cell_volume)
    return _energies(model, np.asarray(points, dtype=float)) + kT * ln_Z[:, None]


def _energies(model: CVEnergyEnsemble, points: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """U_m at ``points`` (n, d) as float64 (M, n), evaluated in chunks to bound memory."""
    param = model.weights[0]
    with torch.no_grad():
        parts = [
            model(torch.tensor(points[i : i + chunk], dtype=param.dtype, device=param.device)).double().cpu()
            for i in range(0, len(points), chunk)
        ]
    return torch.cat(parts, dim=1).numpy() if parts else np.zeros((model.members, 0))


def ensemble_fes(model: CVEnergyEnsemble, grid: Grid, kT: float) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's free-energy surface and its uncertainty on the grid, both grid.shape, kJ/mol.

    ``F_mean`` is the mean of the members' normalised free energies, shifted to zero at its
    minimum; ``eps`` is their standard deviation (over members, ddof=0 as in Reinforced
    Dynamics), the disagreement that switches the bias off (METHODS §1, "Exploration reward").
    """
    F = free_energies(model, grid, kT)
    F_mean = F.mean(axis=0)
    return F_mean - F_mean.min(), F.std(axis=0)


def save(model: CVEnergyEnsemble, path: str | os.PathLike, meta: dict) -> None:
    """Write ``{"state_dict", "meta"}`` to ``path`` (``cg.pt``) atomically; ``meta`` (JSON-ready,
    e.g. provenance) is stored as a JSON string together with the model's architecture."""
    if "architecture" in meta:
        raise ValueError("meta must not have an 'architecture' key: save() stores the model's own there")
    blob = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": json.dumps({**meta, "architecture": model.architecture}),
    }
    write_torch(path, blob)


def load(path: str | os.PathLike, cv_names=None) -> tuple[CVEnergyEnsemble, dict]:
    """Read a :func:`save` file (weights-only unpickling, onto the CPU); return the model and the
    caller's meta (without the architecture, which the model carries as attributes). With
    ``cv_names``, the model must be one on exactly these CVs."""
    # torch raises many kinds of error for a file that is not a checkpoint
    with reading(path, "cgflow cg.pt", (Exception,)):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(blob["meta"])
    arch = meta.pop("architecture", {})
    if arch.pop("model", None) != MODEL_NAME:
        raise InputError(f"{path} does not hold a {MODEL_NAME}")
    if cv_names is not None and meta.get("cv_names") != list(cv_names):
        raise InputError(f"{path} is a CG model on the CVs {meta.get('cv_names')}, not on this system's {list(cv_names)}")
    model = CVEnergyEnsemble(**arch)
    model.load_state_dict(blob["state_dict"])
    return model, meta
