"""A bias on a CV grid: exactly what the FG engine applies, and the same function in numpy.

OpenMM's ``Continuous1D/2D/3DFunction`` interpolates tabulated values with natural (or, for
periodic CVs, periodic) cubic splines, as a tensor product across dimensions. scipy's
interpolating B-splines with the same boundary conditions give the identical function, so the
bias energy cgflow uses for reweighting is, to rounding, the one the MD felt (a test checks it).
Non-periodic CVs are clamped to the grid, so the bias is constant, not zero, beyond it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from cgflow.io import InputError, reading, write_npz

FORCE_GROUP = 31  # the bias force's group, so its energy can be read apart from the FG potential


@dataclass(frozen=True, eq=False)
class BiasGrid:
    """Bias values (kJ/mol) on a regular grid of points spanning [lower, upper] per CV, both
    ends included (axis i is CV i); for a periodic CV the last point repeats the first."""

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    periodic: tuple[bool, ...]
    values: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.values.ndim != len(self.names) or not 1 <= self.values.ndim <= 3:
            raise ValueError(f"a bias grid needs 1 to 3 CVs and values of that dimension, got {self.values.shape}")
        for i, p in enumerate(self.periodic):
            if p and not np.allclose(np.take(self.values, 0, axis=i), np.take(self.values, -1, axis=i)):
                raise ValueError(f"periodic CV {self.names[i]}: first and last grid values must be equal")

    @classmethod
    def zeros(cls, names, lower, upper, periodic, points: int, meta=None) -> "BiasGrid":
        shape = (points,) * len(names)
        return cls(tuple(names), tuple(lower), tuple(upper), tuple(periodic), np.zeros(shape), meta or {})

    @property
    def axes(self) -> list[np.ndarray]:
        return [np.linspace(lo, hi, n) for lo, hi, n in zip(self.lower, self.upper, self.values.shape)]

    @property
    def points(self) -> np.ndarray:
        """All grid points, shape (G, d), C order."""
        mesh = np.meshgrid(*self.axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)

    @cached_property
    def _spline(self):
        from scipy.interpolate import NdBSpline, make_interp_spline

        coef, knots = self.values, []
        for d, (axis, periodic) in enumerate(zip(self.axes, self.periodic)):
            spline = make_interp_spline(axis, coef, k=3, bc_type="periodic" if periodic else "natural", axis=d)
            coef = np.moveaxis(spline.c, 0, d)
            knots.append(spline.t)
        return NdBSpline(tuple(knots), coef, 3)

    def fold(self, s: np.ndarray) -> np.ndarray:
        """Wrap periodic CVs into [lower, upper), clamp the others onto the grid."""
        s = np.array(s, dtype=float, ndmin=2)
        for i, (lo, hi, p) in enumerate(zip(self.lower, self.upper, self.periodic)):
            s[:, i] = lo + np.mod(s[:, i] - lo, hi - lo) if p else np.clip(s[:, i], lo, hi)
        return s

    def __call__(self, s: np.ndarray) -> np.ndarray:
        """Bias energy (kJ/mol) at CV values ``s`` of shape (n, d)."""
        if not self.values.any():
            return np.zeros(len(np.atleast_2d(s)))
        return self._spline(self.fold(s))

    # --- OpenMM ------------------------------------------------------------------------------
    def tabulated_function(self):
        """The grid as an OpenMM Continuous{1,2,3}DFunction (x fastest, as OpenMM stores it)."""
        import openmm

        periodic = all(self.periodic)
        if any(self.periodic) and not periodic:
            raise ValueError("OpenMM tabulated functions cannot mix periodic and non-periodic CVs")
        cls = {1: openmm.Continuous1DFunction, 2: openmm.Continuous2DFunction,
               3: openmm.Continuous3DFunction}[self.values.ndim]
        return cls(*self.table_parameters(), periodic)

    def table_parameters(self) -> tuple:
        """The tabulated function's parameters ((sizes,) values, limits), as setFunctionParameters takes them."""
        flat = self.values.ravel(order="F")
        limits = [v for pair in zip(self.lower, self.upper) for v in pair]
        return (flat, *limits) if self.values.ndim == 1 else (*self.values.shape, flat, *limits)

    def clamped_arguments(self, expressions: list[str]) -> str:
        """The tabulated function's arguments in Lepton, non-periodic ones clamped to the grid."""
        args = []
        for expr, lo, hi, p in zip(expressions, self.lower, self.upper, self.periodic):
            args.append(f"({expr})" if p else f"min(max({expr}, {lo!r}), {hi!r})")
        return ", ".join(args)

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        write_npz(path, values=self.values, lower=np.array(self.lower), upper=np.array(self.upper),
                  periodic=np.array(self.periodic), names=np.array(self.names),
                  meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: str | Path, cv_names=None) -> "BiasGrid":
        """Read a :meth:`save` file; with ``cv_names``, it must be a bias on exactly these CVs."""
        with reading(path, "cgflow bias.npz"), np.load(path, allow_pickle=False) as data:
            bias = cls(tuple(str(n) for n in data["names"]), tuple(map(float, data["lower"])),
                       tuple(map(float, data["upper"])), tuple(map(bool, data["periodic"])),
                       data["values"].astype(float), json.loads(str(data["meta"])))
        if cv_names is not None and bias.names != tuple(cv_names):
            raise InputError(f"{path} is a bias on the CVs {list(bias.names)}, not on this system's {list(cv_names)}")
        return bias
