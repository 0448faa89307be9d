"""Alanine dipeptide for cycle coarse graining: Z-matrix maps and the OpenMM energy in torch.

One Z-matrix (:data:`ZMATRIX`) describes every atom by a bond, an angle and a torsion to atoms
placed before it. A :class:`ZMatrixMap` splits its internal coordinates (ICs) into three sets:
**given** ICs ``s`` (the conditioning values), **fixed** X-H bond lengths (the HBonds
constraint lengths, as in the FG MD) and the **generated** rest ``u``, which a conditional flow
q(u | s) produces. It turns (s, u) into Cartesian positions (NeRF, batched in torch) and gives
the log-Jacobian of that map, so the flow's density over Cartesian space (rigid-body motion
removed, constraints held) is known and ``exp(-beta F(s)) = E_q[exp(-beta U(R)) / q(R | s)]``
(METHODS.md §2) holds with F in the measure of the ICs s. Two maps are used:

- :func:`backbone_map` (:class:`Backbone`): s = (phi, psi); the 46 other free ICs are generated.
  F(s) is then the (phi, psi) free energy (the Jacobian of phi, psi themselves is 1).
- :func:`hydrogen_map`: s = the 24 ICs of the 10 heavy atoms (the CG beads; 9 bonds, 8 angles,
  7 torsions: invariant to rigid motion, sensitive to chirality); the 12 hydrogens' angles and
  torsions (24) are generated: all-atom structures from heavy-atom beads.

Rigid-body motion is fixed by the first three atoms; Fixman's metric correction for the
constraints is left out (small). :class:`ZMatrixEnergy` is the energy of (s, u) in u's
measure, the interface the generic trainer and estimator of this package use.

The energy goes through one OpenMM Context (CPU platform, one thread), configuration by
configuration; the backward pass uses OpenMM's forces. This module imports torch at the top:
import it inside functions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Z-matrix order and references (bond partner c, angle b-c-d, torsion a-b-c-d) by atom index of
# the shipped PDB (ACE 0-5, ALA 6-15, NME 16-21). Atom 14 (C) carries phi = C4-N6-CA8-C14 and
# atom 16 (N) psi = N6-CA8-C14-N16; stiff atoms hang on improper torsions, methyl hydrogens on
# the first hydrogen of their group. No other torsion follows phi or psi (the amide H hangs on
# the ACE carbonyl, not on C14), so q(. | phi, psi) only has to learn steric responses.
ZMATRIX: tuple[tuple[int, int, int, int], ...] = (
    (4, -1, -1, -1),
    (6, 4, -1, -1),
    (8, 6, 4, -1),
    (14, 8, 6, 4),     # phi
    (16, 14, 8, 6),    # psi
    (1, 4, 6, 8),
    (5, 4, 6, 1),
    (7, 6, 4, 5),      # H on N in the peptide plane, trans to O: independent of phi
    (10, 8, 6, 14),
    (9, 8, 6, 14),
    (15, 14, 8, 16),
    (18, 16, 14, 8),
    (17, 16, 14, 18),
    (0, 1, 4, 6),
    (2, 1, 4, 0),
    (3, 1, 4, 0),
    (11, 10, 8, 6),
    (12, 10, 8, 11),
    (13, 10, 8, 11),
    (19, 18, 16, 14),
    (20, 18, 16, 19),
    (21, 18, 16, 19),
)
PHI_ROW, PSI_ROW = 3, 4
HYDROGENS = frozenset({0, 2, 3, 7, 9, 11, 12, 13, 17, 19, 20, 21})


def _dihedral(a, b, c, d):
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, -1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, -1, keepdims=True) * b1n
    x = np.sum(v * w, -1)
    y = np.sum(np.cross(b1n, v) * w, -1)
    return np.arctan2(y, x)


def internal_coordinates(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonds (nm), angles and torsions (rad) of every Z-matrix row for positions (n, 22, 3)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 22, 3)
    n = len(ZMATRIX)
    bonds, angles, torsions = (np.full((len(xyz), n), np.nan) for _ in range(3))
    for i, (d, c, b, a) in enumerate(ZMATRIX):
        if c >= 0:
            bonds[:, i] = np.linalg.norm(xyz[:, d] - xyz[:, c], axis=-1)
        if b >= 0:
            u, v = xyz[:, b] - xyz[:, c], xyz[:, d] - xyz[:, c]
            cos = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
            angles[:, i] = np.arccos(np.clip(cos, -1, 1))
        if a >= 0:
            torsions[:, i] = _dihedral(xyz[:, a], xyz[:, b], xyz[:, c], xyz[:, d])
    return bonds, angles, torsions


BOND, ANGLE, TORSION = "bond", "angle", "torsion"
IC_SCALE = {BOND: 0.004, ANGLE: 0.06, TORSION: 0.3}
"""Standard units of the generated ICs: nm for bonds, rad for angles; torsions are generated
unbounded and mapped to ``centre + pi tanh(0.3 u)`` (one full turn around their centre)."""


def _slots() -> list[tuple[str, int]]:
    """Every IC of the Z-matrix as (kind, row): bonds first, then angles, then torsions."""
    rows = range(len(ZMATRIX))
    return ([(BOND, i) for i in rows if ZMATRIX[i][1] >= 0] + [(ANGLE, i) for i in rows if ZMATRIX[i][2] >= 0]
            + [(TORSION, i) for i in rows if ZMATRIX[i][3] >= 0])


def _constraint_lengths(system) -> dict:
    out = {}
    for k in range(system.getNumConstraints()):
        i, j, length = system.getConstraintParameters(k)
        out[frozenset((i, j))] = length.value_in_unit(length.unit) if hasattr(length, "unit") else length
    return out


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


class ZMatrixMap:
    """(given ICs s, generated u) <-> Cartesian positions of alanine dipeptide; see the module docstring.

    ``given``: the (kind, row) slots that s holds, in s's column order. Every X-H bond is fixed at
    its constraint length (nm, from ``system``); every other IC is generated, in the order bonds,
    angles, torsions (``generated``). ``centre`` holds the generated ICs of ``reference_xyz``.
    """

    def __init__(self, system, reference_xyz: np.ndarray, given):
        constraints = _constraint_lengths(system)
        self.given = [tuple(g) for g in given]
        hydrogen_bond = {(BOND, i) for i in range(len(ZMATRIX)) if ZMATRIX[i][1] >= 0 and ZMATRIX[i][0] in HYDROGENS}
        self.fixed = [slot for slot in _slots() if slot in hydrogen_bond]
        self.generated = [slot for slot in _slots() if slot not in hydrogen_bond and slot not in self.given]
        self.fixed_values = torch.tensor([constraints[frozenset(ZMATRIX[i][:2])] for _, i in self.fixed],
                                         dtype=torch.float64)
        self.centre = torch.tensor(ic_values(reference_xyz, self.generated)[0], dtype=torch.float64)
        self.scale = torch.tensor([IC_SCALE[kind] for kind, _ in self.generated], dtype=torch.float64)
        self.kinds = [kind for kind, _ in self.generated]
        self.is_torsion = torch.tensor([k == TORSION for k in self.kinds])
        self.features = len(self.generated)
        self.n_given = len(self.given)
        self.given_periodic = [kind == TORSION for kind, _ in self.given]

    def to_json(self) -> dict:
        """What identifies the map (for checking a saved flow against the system it is used on)."""
        return {"zmatrix": [list(r) for r in ZMATRIX], "given": [list(g) for g in self.given],
                "fixed_bonds_nm": [round(float(b), 6) for b in self.fixed_values],
                "centre": [round(float(c), 6) for c in self.centre]}

    def given_values(self, xyz: np.ndarray) -> np.ndarray:
        """The given ICs s (n, n_given) of positions (n, 22, 3) nm: nm and rad."""
        return ic_values(xyz, self.given)

    def generated_ics(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated ICs (n, features) of codes u and ln|d IC / d u| (n,)."""
        t = torch.tanh(self.scale * u)
        ics = torch.where(self.is_torsion, self.centre + math.pi * t, self.centre + self.scale * u)
        log_det = torch.where(self.is_torsion, torch.log(math.pi * self.scale * (1 - t**2) + 1e-300),
                              torch.log(self.scale).expand_as(u)).sum(-1)
        return ics, log_det

    def codes(self, xyz: np.ndarray) -> np.ndarray:
        """The codes u (n, features) of positions (n, 22, 3): the inverse of :meth:`generated_ics`.
        A torsion exactly half a turn from its centre has no finite code (never met in practice)."""
        ics = ic_values(xyz, self.generated)
        centre, scale = self.centre.numpy(), self.scale.numpy()
        torsion = self.is_torsion.numpy()
        with np.errstate(divide="ignore"):
            t = np.clip(_wrap(ics - centre) / np.pi, -1 + 1e-15, 1 - 1e-15)
            return np.where(torsion, np.arctanh(t) / scale, (ics - centre) / scale)

    def to_cartesian(self, u: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (n, 22, 3) nm and ln|d IC / d u| + ln J_IC (n,) for codes u (n, features), given s
        (n, n_given). ln J_IC is the Jacobian of Cartesian -> ICs with the rigid body removed
        (prod b^2 over bonds, sin(angle) over angles), so the flow's ln q(u | s) minus this is the
        log-density of the positions."""
        n = u.shape[0]
        s = s.to(torch.float64).reshape(n, -1)
        ics, log_det = self.generated_ics(u.to(torch.float64))
        value = {}
        for k, slot in enumerate(self.generated):
            value[slot] = ics[:, k]
        for k, slot in enumerate(self.given):
            value[slot] = s[:, k]
        for k, slot in enumerate(self.fixed):
            value[slot] = self.fixed_values[k].expand(n)
        log_j = sum(2 * torch.log(v) if kind == BOND else torch.log(torch.sin(v).clamp_min(1e-12))
                    for (kind, _), v in value.items() if kind != TORSION)
        pos = {}
        zero = torch.zeros(n, dtype=torch.float64)
        d0, d1, d2 = ZMATRIX[0][0], ZMATRIX[1][0], ZMATRIX[2][0]
        pos[d0] = torch.zeros(n, 3, dtype=torch.float64)
        pos[d1] = torch.stack([value[BOND, 1], zero, zero], -1)
        th = value[ANGLE, 2]
        pos[d2] = pos[d1] + value[BOND, 2][:, None] * torch.stack([-torch.cos(th), torch.sin(th), zero], -1)
        for i in range(3, len(ZMATRIX)):
            d, c, b, a = ZMATRIX[i]
            pos[d] = _place(pos[a], pos[b], pos[c], value[BOND, i], value[ANGLE, i], value[TORSION, i])
        xyz = torch.stack([pos[k] for k in range(22)], 1)
        return xyz, log_det + log_j


def ic_values(xyz: np.ndarray, slots) -> np.ndarray:
    """The ICs named by ``slots`` for positions (n, 22, 3): (n, len(slots)), nm and rad."""
    bonds, angles, torsions = internal_coordinates(xyz)
    table = {BOND: bonds, ANGLE: angles, TORSION: torsions}
    return np.stack([table[kind][:, row] for kind, row in slots], -1) if slots else np.zeros((len(bonds), 0))


def backbone_map(system, reference_xyz: np.ndarray) -> ZMatrixMap:
    """s = (phi, psi) (rad); the 46 other free ICs generated."""
    return ZMatrixMap(system, reference_xyz, [(TORSION, PHI_ROW), (TORSION, PSI_ROW)])


class Backbone(ZMatrixMap):
    """:func:`backbone_map` with ``to_cartesian(u, phi, psi)``: the generated ICs are the free bonds
    (not X-H), every angle, and every torsion but phi/psi, in that order (``features`` = 46)."""

    def __init__(self, system, reference_xyz: np.ndarray):
        super().__init__(system, reference_xyz, [(TORSION, PHI_ROW), (TORSION, PSI_ROW)])

    def to_cartesian(self, u, phi, psi=None):
        """Positions and log-Jacobian (see :meth:`ZMatrixMap.to_cartesian`) for u (n, 46) at
        (phi, psi) (n,) each, or with ``phi`` an (n, 2) tensor of both and ``psi`` None."""
        s = phi if psi is None else torch.stack([phi, psi], -1)
        return super().to_cartesian(u, s)


def hydrogen_map(system, reference_xyz: np.ndarray) -> ZMatrixMap:
    """s = the 24 ICs of the heavy atoms (nm, rad); the hydrogens' 12 angles and 12 torsions generated."""
    heavy = [slot for slot in _slots() if ZMATRIX[slot[1]][0] not in HYDROGENS]
    return ZMatrixMap(system, reference_xyz, heavy)


def kabsch_fit(xyz: np.ndarray, target: np.ndarray, atoms) -> np.ndarray:
    """``xyz`` (n, N, 3) moved rigidly so that ``atoms`` best match ``target`` (n, N or len(atoms), 3)."""
    atoms = list(atoms)
    a = xyz[:, atoms]
    b = target[:, atoms] if target.shape[1] == xyz.shape[1] else target
    ca, cb = a.mean(1, keepdims=True), b.mean(1, keepdims=True)
    h = np.einsum("nki,nkj->nij", a - ca, b - cb)
    U, _, Vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", U, Vt)))
    D = np.zeros_like(h)
    D[:, 0, 0] = D[:, 1, 1] = 1
    D[:, 2, 2] = d
    R = np.einsum("nij,njk,nkl->nil", U, D, Vt)
    return np.einsum("nki,nij->nkj", xyz - ca, R) + cb


class ZMatrixEnergy:
    """The energy of (s, u) through a :class:`ZMatrixMap`, in u's measure, kJ/mol, in torch:

        U_u(s, u) = U(R(s, u)) - kT ln J(s, u),

    so ``exp(-U_u/kT)`` integrates over u to ``exp(-F(s)/kT)`` and the generic reverse-KL trainer
    (:mod:`~cgflow.reconstruction.training`) and per-point estimator
    (:mod:`~cgflow.reconstruction.free_energy`) apply unchanged (a toy's Jacobian is constant,
    so :class:`~cgflow.reconstruction.energy.ToyEnergy` has no such term). ``evaluations``
    counts OpenMM energy evaluations.
    """

    CAP_KT = 1.0e3
    """Training only: above this, beta U counts logarithmically (early samples clash)."""

    def __init__(self, zmap: ZMatrixMap, system, kT: float, platform: str = "CPU"):
        self.geometry = zmap
        self.engine = OpenMMEnergy(system, platform)
        self.kT = float(kT)

    @property
    def evaluations(self) -> int:
        return self.engine.evaluations

    @property
    def n_cvs(self) -> int:
        return self.geometry.n_given

    @property
    def n_hidden(self) -> int:
        return self.geometry.features

    def positions(self, s, y):
        """Positions (n, 22, 3) nm of (s, y)."""
        return self.geometry.to_cartesian(y, s)[0]

    def parts(self, s, y):
        """(positions R (n, 22, 3) nm, U(R) kJ/mol, ln J) of each row; differentiable in s and y."""
        xyz, log_j = self.geometry.to_cartesian(y, s)
        return xyz, self.engine.torch_energy(xyz), log_j

    def __call__(self, s, y):
        """U_u(s, y) = U(R) - kT ln J, kJ/mol."""
        _, u, log_j = self.parts(s, y)
        return u - self.kT * log_j

    def training_energy(self, s, y):
        """U_u with beta U soft-capped above CAP_KT (log growth): the reverse-KL target, kJ/mol."""
        import torch

        _, u, log_j = self.parts(s, y)
        beta_u = u / self.kT
        cap = self.CAP_KT
        beta_u = torch.where(beta_u < cap, beta_u, cap + torch.log1p(beta_u.clamp_min(cap) - cap))
        return self.kT * (beta_u - log_j)

    def log_weight_energy(self, s, y):
        """U_u, kJ/mol: the estimator's energy (no cap, no restriction)."""
        return self(s, y)

    def mean_force_samples(self, s, y):
        """(U_u, dU_u/ds at fixed y) for each row: (n,) kJ/mol and (n, k) kJ/mol per unit of s."""
        import torch

        s = s.detach().to(torch.float64).clone().requires_grad_(True)
        u = self(s, y.detach())
        (grad,) = torch.autograd.grad(u.sum(), s)
        u = torch.where(torch.isfinite(u), u.detach(), torch.full_like(u, float("inf")))
        return u, grad


def _place(a, b, c, r, theta, phi):
    """NeRF: the atom d with |cd| = r, angle b-c-d = theta and torsion a-b-c-d = phi."""
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    nrm = torch.linalg.cross(b - a, bc, dim=-1)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    m = torch.linalg.cross(nrm, bc, dim=-1)
    d2 = torch.stack([-r * torch.cos(theta), r * torch.sin(theta) * torch.cos(phi),
                      r * torch.sin(theta) * torch.sin(phi)], -1)
    return c + d2[:, :1] * bc + d2[:, 1:2] * m + d2[:, 2:3] * nrm


class OpenMMEnergy:
    """Potential energies (kJ/mol) and forces of positions (n, 22, 3) nm through one Context."""

    def __init__(self, system, platform: str = "CPU"):
        import openmm

        properties = {"Threads": "1"} if platform == "CPU" else {}
        integrator = openmm.VerletIntegrator(0.001)
        self.context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)
        self.evaluations = 0

    def __call__(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        energies = np.empty(len(xyz))
        forces = np.empty_like(xyz)
        for k, x in enumerate(xyz):
            self.context.setPositions(x)
            state = self.context.getState(getEnergy=True, getForces=True)
            energies[k] = state.getPotentialEnergy()._value
            forces[k] = state.getForces(asNumpy=True)._value
        self.evaluations += len(xyz)
        return energies, forces

    def torch_energy(self, xyz: torch.Tensor) -> torch.Tensor:
        """U(xyz) as a differentiable torch function (the gradient is minus OpenMM's force)."""
        return _OpenMMFunction.apply(xyz, self)


class _OpenMMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, engine):
        energies, forces = engine(xyz.detach().cpu().numpy())
        ctx.save_for_backward(torch.as_tensor(-forces, dtype=xyz.dtype))
        return torch.as_tensor(energies, dtype=xyz.dtype)

    @staticmethod
    def backward(ctx, grad):
        (gradient,) = ctx.saved_tensors
        return grad[:, None, None] * gradient, None
