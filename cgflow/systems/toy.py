"""Toy FG systems: particles on an analytic potential, with exact PMFs by quadrature.

A toy walker is one particle of mass ``mass`` (amu) moving in x, y, z (nm) on an energy
given as an OpenMM/Lepton expression (kJ/mol). All walkers are independent particles in one
OpenMM Context (a ``CustomExternalForce``), so a thousand walkers cost about what one does.
Coordinates the energy does not use diffuse freely; they do not enter any CV.

The exact PMF along the CVs, ``F(s) = -kT ln Integral exp(-U/kT) delta(xi(r) - s) dr``,
is computed by quadrature over ``box`` and integrated over each analysis bin, so it is the
quantity a histogram estimates, with no bin-centring bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cgflow.systems.expression import Expression, parse

KB = 0.0083144626181532  # kJ/mol/K

MULLER_BROWN_SCALE = 0.1
"""Müller-Brown energies are the 1979 values times this factor, in kJ/mol. At 300 K the
deepest basin (A, near (-0.56, 1.44) nm) lies 10.7 kJ/mol = 4.3 kT below the A/C saddle."""


def _muller_brown(scale: float) -> str:
    terms = []
    for A, a, b, c, x0, y0 in (
        (-200, -1, 0, -10, 1, 0),
        (-100, -1, 0, -10, 0, 0.5),
        (-170, -6.5, 11, -6.5, -0.5, 1.5),
        (15, 0.7, 0.6, 0.7, -1, 1),
    ):
        terms.append(
            f"({A})*exp(({a})*(x-({x0}))^2 + ({b})*(x-({x0}))*(y-({y0})) + ({c})*(y-({y0}))^2)"
        )
    return f"{scale}*(" + " + ".join(terms) + ")"


@dataclass(frozen=True)
class Builtin:
    """A named toy potential with the box it is meant to be studied in."""

    energy: str
    box: dict[str, tuple[float, float]]
    cv: tuple[str, ...]
    doc: str


BUILTINS: dict[str, Builtin] = {
    "double_well": Builtin(
        "6*(x^2-1)^2",
        {"x": (-2.0, 2.0)},
        ("x",),
        "1-D double well, minima at x = ±1 nm, barrier 6 kJ/mol (2.4 kT at 300 K)",
    ),
    "double_well_2d": Builtin(
        "25*(x^2-1)^2 + 10*(1+0.5*x^2)*y^2",
        {"x": (-2.0, 2.0), "y": (-2.0, 2.0)},
        ("x",),
        "2-D double well: barrier 25 kJ/mol (10 kT at 300 K) along x, y harmonic with an "
        "x-dependent stiffness so the PMF along x has an entropic part",
    ),
    "muller_brown": Builtin(
        _muller_brown(MULLER_BROWN_SCALE),
        {"x": (-1.5, 1.2), "y": (-0.2, 2.0)},
        ("x",),
        f"Müller-Brown potential scaled by {MULLER_BROWN_SCALE} (kJ/mol, nm): three basins, "
        "barrier 4.3 kT from the deepest one at 300 K",
    ),
}


@dataclass(frozen=True)
class CV:
    """A collective variable: its column name and its expression in x, y, z (nm)."""

    name: str
    expression: str

    @cached_property
    def fn(self) -> Expression:
        return parse(self.expression)

    @property
    def unit(self) -> str:
        """``nm`` for a linear combination of the coordinates; else ``""`` (x*y is in nm^2,
        sin(x) has none: the expression's own units, which cgflow cannot name)."""
        rng = np.random.default_rng(0)
        a, b = ({c: rng.uniform(-1, 1, 3) for c in self.fn.variables} for _ in range(2))
        zero = {c: np.zeros(3) for c in self.fn.variables}
        both = {c: a[c] + b[c] for c in self.fn.variables}
        additive = self.fn(**both) - self.fn(**a) - self.fn(**b) + self.fn(**zero)
        return "nm" if np.allclose(additive, 0.0, atol=1e-9) else ""


@dataclass(frozen=True)
class ToySystem:
    """Non-interacting particles on one analytic potential; see the module docstring."""

    shares_context = True  # all walkers are particles of one OpenMM Context

    energy: str
    cvs: tuple[CV, ...]
    box: dict[str, tuple[float, float]]
    mass: float = 1.0
    start: dict[str, float] | None = None

    @property
    def cv_names(self) -> tuple[str, ...]:
        return tuple(cv.name for cv in self.cvs)

    @property
    def cv_periodic(self) -> tuple[bool, ...]:
        return tuple(False for _ in self.cvs)

    @cached_property
    def potential(self) -> Expression:
        return parse(self.energy)

    @property
    def coordinates(self) -> tuple[str, ...]:
        """The coordinates the energy or a CV depends on, in x, y, z order."""
        used = set(self.potential.variables).union(*(cv.fn.variables for cv in self.cvs))
        return tuple(c for c in ("x", "y", "z") if c in used)

    # --- evaluation on particle positions (n, 3) in nm ---------------------------------
    def energies(self, positions: np.ndarray) -> np.ndarray:
        """Potential energy of each particle, kJ/mol."""
        return self.potential(**_split(positions))

    def cv_values(self, positions: np.ndarray) -> np.ndarray:
        """CV values of each particle, shape (n, n_cvs)."""
        coords = _split(positions)
        return np.stack([cv.fn(**coords) for cv in self.cvs], axis=-1)

    # --- OpenMM -------------------------------------------------------------------------
    def create_system(self, n_walkers: int):
        """An OpenMM System of ``n_walkers`` particles, each on the potential."""
        import openmm

        system = openmm.System()
        force = openmm.CustomExternalForce(self.energy)
        for i in range(n_walkers):
            system.addParticle(self.mass)
            force.addParticle(i, [])
        system.addForce(force)
        return system

    def add_bias(self, system, grid, n_walkers: int) -> None:
        """Add the tabulated bias of the CVs to every walker (one single-particle 'bond' each)."""
        import openmm

        from cgflow.guidance.bias import FORCE_GROUP

        args = grid.clamped_arguments([cv.expression for cv in self.cvs])
        force = openmm.CustomCompoundBondForce(1, f"bias({args}); x=x1; y=y1; z=z1")
        force.addTabulatedFunction("bias", grid.tabulated_function())
        for i in range(n_walkers):
            force.addBond([i], [])
        force.setForceGroup(FORCE_GROUP)
        system.addForce(force)

    def initial_positions(self, n_walkers: int) -> np.ndarray:
        """All walkers start at ``start`` (default: the lowest grid point of the box), nm."""
        point = self.start if self.start is not None else self.grid_minimum()[0]
        pos = np.zeros((n_walkers, 3))
        for i, c in enumerate("xyz"):
            pos[:, i] = point.get(c, 0.0)
        return pos

    # --- quadrature -----------------------------------------------------------------------
    def _axes(self, points: dict[str, int]) -> tuple[list[np.ndarray], float]:
        """Cell centres per used coordinate (``points[c]`` cells over the box) and the cell volume."""
        axes, volume = [], 1.0
        for c in self.coordinates:
            lo, hi = self.box[c]
            h = (hi - lo) / points[c]
            axes.append(lo + h * (np.arange(points[c]) + 0.5))
            volume *= h
        return axes, volume

    def _grid(self, points_per_dim: int):
        """Cell centres and cell volume of a regular grid over the box in the used coordinates."""
        axes, volume = self._axes({c: points_per_dim for c in self.coordinates})
        mesh = np.meshgrid(*axes, indexing="ij")
        return {c: m.ravel() for c, m in zip(self.coordinates, mesh)}, volume

    def grid_minimum(self, points_per_dim: int = 200) -> tuple[dict[str, float], bool]:
        """The lowest grid point in the box and whether it lies on the box's edge."""
        coords, _ = self._grid(points_per_dim)
        with np.errstate(all="ignore"):
            u = self.potential(**{c: coords[c] for c in self.potential.variables})
        u = np.where(np.isfinite(u), u, np.inf)
        i = int(np.argmin(u))
        point = {c: float(v[i]) for c, v in coords.items()}
        edge = False
        for c in self.potential.variables:
            lo, hi = self.box[c]
            h = (hi - lo) / points_per_dim
            edge |= point[c] < lo + h or point[c] > hi - h
        return point, edge

    def cv_range(self) -> list[tuple[float, float]]:
        """The range of each CV over the box, box edges included (the default analysis grid)."""
        dims = self.coordinates
        axes = [np.linspace(*self.box[c], 201) for c in dims]
        coords = {c: m.ravel() for c, m in zip(dims, np.meshgrid(*axes, indexing="ij"))}
        out = []
        for cv in self.cvs:
            values = cv.fn(**{c: coords[c] for c in cv.fn.variables})
            out.append((float(values.min()), float(values.max())))
        return out

    def reference_fes(self, edges: list[np.ndarray], temperature: float) -> np.ndarray:
        """Exact bin-integrated PMF on the given CV bins, kJ/mol, min 0, NaN where zero weight.

        Midpoint quadrature over the box, each cell counted in the bin of its centre. Along the
        coordinates the CVs use there are ``CELLS_PER_BIN`` cells per bin, as far as
        ``QUADRATURE_MAX_POINTS`` allows: with 2.4 (3-D at 120 cells per coordinate, 50 bins),
        which bin got each cell's whole weight aliased the PMF by 0.2 kT RMSE. The grid goes
        through in slabs of the first coordinate."""
        dims = self.coordinates
        base = {1: 20000, 2: 1000, 3: 120}[max(len(dims), 1)]
        on_cv = set().union(*(cv.fn.variables for cv in self.cvs))
        bins = max(len(e) - 1 for e in edges)
        n_on = sum(c in on_cv for c in dims)
        affordable = (QUADRATURE_MAX_POINTS / base ** (len(dims) - n_on)) ** (1 / max(n_on, 1))
        fine = max(base, min(CELLS_PER_BIN * bins, int(affordable)))
        axes, volume = self._axes({c: fine if c in on_cv else base for c in dims})
        kT = KB * temperature
        slab = max(1, int(QUADRATURE_CHUNK // max(np.prod([len(a) for a in axes[1:]]), 1)))
        parts = []
        for start in range(0, len(axes[0]), slab):
            mesh = np.meshgrid(axes[0][start:start + slab], *axes[1:], indexing="ij")
            coords = {c: m.ravel() for c, m in zip(dims, mesh)}
            with np.errstate(all="ignore"):
                logw = -self.potential(**{c: coords[c] for c in self.potential.variables}) / kT
            logw = np.where(np.isfinite(logw), logw, -np.inf)
            s = np.stack([cv.fn(**{c: coords[c] for c in cv.fn.variables}) for cv in self.cvs], axis=-1)
            top = logw.max()
            if np.isfinite(top):
                parts.append((np.histogramdd(s, bins=edges, weights=np.exp(logw - top) * volume)[0], top))
        shift = max((top for _, top in parts), default=0.0)
        mass = sum((part * np.exp(top - shift) for part, top in parts), np.zeros([len(e) - 1 for e in edges]))
        widths = np.meshgrid(*[np.diff(e) for e in edges], indexing="ij")
        bin_volume = np.prod(widths, axis=0)
        with np.errstate(divide="ignore"):
            F = -kT * np.log(mass / bin_volume)
        F[~np.isfinite(F)] = np.nan
        return F - np.nanmin(F)


CELLS_PER_BIN = 20
"""The toys' exact PMF has at least this many quadrature cells per bin along a CV's coordinates."""
QUADRATURE_MAX_POINTS = 30_000_000
"""At most this many quadrature cells (a few seconds): a CV on all three coordinates gets fewer per bin."""
QUADRATURE_CHUNK = 4_000_000
"""Grid points evaluated at once by the toys' quadrature (memory: a few hundred MB)."""


def _split(positions: np.ndarray) -> dict[str, np.ndarray]:
    positions = np.asarray(positions, dtype=float)
    return {c: positions[..., i] for i, c in enumerate("xyz")}
