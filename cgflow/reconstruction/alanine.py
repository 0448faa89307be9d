"""Alanine dipeptide for cycle coarse graining: internal coordinates with phi/psi as two of them,
and the OpenMM energy as a differentiable torch function.

A conditional flow generates the 46 internal coordinates (ICs) that are neither phi, psi nor an
X-H bond length (fixed at the HBonds constraint lengths, as in the FG MD) given (phi, psi);
:class:`Backbone` turns them into Cartesian positions (NeRF, batched in torch) and gives the
log-Jacobian of that map, so that the flow's density over Cartesian space restricted to
xi(R) = (phi, psi) is known and ``exp(-beta F(phi, psi)) = E_q[exp(-beta U(R)) / q(R | phi, psi)]``
(METHODS.md §2) holds with F in the measure of the (phi, psi) FES. Rigid-body motion is fixed by
the first three atoms; Fixman's metric correction for the constraints is left out (small).

The energy goes through one OpenMM Context (CPU platform, one thread), configuration by
configuration; the backward pass uses OpenMM's forces.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Z-matrix order and references (bond partner c, angle b-c-d, torsion a-b-c-d) by atom index of
# the shipped PDB (ACE 0-5, ALA 6-15, NME 16-21). Atom 14 (C) carries phi = C4-N6-CA8-C14 and
# atom 16 (N) psi = N6-CA8-C14-N16; stiff atoms hang on improper torsions, methyl hydrogens on
# the first hydrogen of their group.
ZMATRIX: tuple[tuple[int, int, int, int], ...] = (
    (4, -1, -1, -1),
    (6, 4, -1, -1),
    (8, 6, 4, -1),
    (14, 8, 6, 4),     # phi
    (16, 14, 8, 6),    # psi
    (1, 4, 6, 8),
    (5, 4, 6, 1),
    (7, 6, 8, 14),
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


class Backbone:
    """The generated ICs <-> Cartesian map of alanine dipeptide given (phi, psi).

    ``features`` = 46: the free bonds (not X-H), every angle, and every torsion but phi/psi, in
    that order. ``fixed_bonds`` holds the X-H lengths (nm, from the System's constraints).
    ``centre``/``scale`` standardise the free ICs around the reference structure; torsions are
    generated unbounded and mapped to ``centre + pi tanh(0.3 u)``, one full turn around their centre.
    """

    def __init__(self, system, reference_xyz: np.ndarray):
        constraints = {}
        for k in range(system.getNumConstraints()):
            i, j, length = system.getConstraintParameters(k)
            constraints[frozenset((i, j))] = length.value_in_unit(length.unit) if hasattr(length, "unit") else length
        bonds, angles, torsions = (x[0] for x in internal_coordinates(reference_xyz))
        rows = range(len(ZMATRIX))
        self.free_bond_rows = [i for i in rows if ZMATRIX[i][1] >= 0 and ZMATRIX[i][0] not in HYDROGENS]
        self.fixed_bond_rows = [i for i in rows if ZMATRIX[i][1] >= 0 and ZMATRIX[i][0] in HYDROGENS]
        self.angle_rows = [i for i in rows if ZMATRIX[i][2] >= 0]
        self.torsion_rows = [i for i in rows if ZMATRIX[i][3] >= 0 and i not in (PHI_ROW, PSI_ROW)]
        self.fixed_bonds = torch.tensor([constraints[frozenset((ZMATRIX[i][0], ZMATRIX[i][1]))]
                                         for i in self.fixed_bond_rows], dtype=torch.float64)
        self.centre = torch.tensor(np.concatenate([bonds[self.free_bond_rows], angles[self.angle_rows],
                                                   torsions[self.torsion_rows]]), dtype=torch.float64)
        self.scale = torch.tensor([0.004] * len(self.free_bond_rows) + [0.06] * len(self.angle_rows)
                                  + [0.3] * len(self.torsion_rows), dtype=torch.float64)
        self.n_bonds, self.n_angles = len(self.free_bond_rows), len(self.angle_rows)
        self.features = self.n_bonds + self.n_angles + len(self.torsion_rows)

    def to_cartesian(self, u: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor):
        """Positions (n, 22, 3) nm and ln|d IC / d u| + ln J_IC (n,) for generated u (n, 46)."""
        n = u.shape[0]
        nb, na = self.n_bonds, self.n_angles
        free_b = self.centre[:nb] + self.scale[:nb] * u[:, :nb]
        ang = self.centre[nb:nb + na] + self.scale[nb:nb + na] * u[:, nb:nb + na]
        t_scale = self.scale[nb + na:]
        t_u = torch.tanh(t_scale * u[:, nb + na:])
        tors = self.centre[nb + na:] + math.pi * t_u
        log_det = (torch.log(self.scale[:nb + na]).sum()
                   + torch.log(math.pi * t_scale * (1 - t_u**2) + 1e-300).sum(-1))
        rows = len(ZMATRIX)
        bond = [None] * rows
        for k, i in enumerate(self.free_bond_rows):
            bond[i] = free_b[:, k]
        for k, i in enumerate(self.fixed_bond_rows):
            bond[i] = self.fixed_bonds[k].expand(n)
        angle = [None] * rows
        for k, i in enumerate(self.angle_rows):
            angle[i] = ang[:, k]
        torsion = [None] * rows
        for k, i in enumerate(self.torsion_rows):
            torsion[i] = tors[:, k]
        torsion[PHI_ROW], torsion[PSI_ROW] = phi, psi
        # ln J of Cartesian -> ICs (rigid body removed): prod b^2 over bonds, sin(angle) over angles
        log_j = sum(2 * torch.log(bond[i]) for i in self.free_bond_rows) \
            + sum(torch.log(torch.sin(angle[i]).clamp_min(1e-12)) for i in self.angle_rows)
        log_j = log_j + sum(2 * math.log(float(b)) for b in self.fixed_bonds)
        pos = {}
        zero = torch.zeros(n, dtype=torch.float64)
        d0, d1, d2 = ZMATRIX[0][0], ZMATRIX[1][0], ZMATRIX[2][0]
        pos[d0] = torch.zeros(n, 3, dtype=torch.float64)
        pos[d1] = torch.stack([bond[1], zero, zero], -1)
        th = angle[2]
        pos[d2] = pos[d1] + bond[2][:, None] * torch.stack([-torch.cos(th), torch.sin(th), zero], -1)
        for i in range(3, rows):
            d, c, b, a = ZMATRIX[i]
            pos[d] = _place(pos[a], pos[b], pos[c], bond[i], angle[i], torsion[i])
        xyz = torch.stack([pos[k] for k in range(22)], 1)
        return xyz, log_det + log_j


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


def context_features(phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """The flow's context: (sin, cos) of phi and psi, so q is periodic in both."""
    return torch.stack([torch.sin(phi), torch.cos(phi), torch.sin(psi), torch.cos(psi)], -1)
