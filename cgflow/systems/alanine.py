"""Alanine dipeptide (ACE-ALA-NME), the fine-grained (FG) test system of cgflow.

Small enough to sample exhaustively on a CPU yet with a non-trivial two-dimensional free
energy surface in (phi, psi), it is the reference system for checking the CG models and
the CG-guided sampling rounds. The structure ships with the package
(``data/alanine_dipeptide.pdb``, C7eq, minimised with Amber ff14SB; regenerate it with
:mod:`cgflow.systems.build_alanine_pdb`), so nothing is downloaded at run time.

Units are OpenMM's: nm, ps, K, kJ/mol; angles in radians. openmm and mdtraj are imported
inside the methods that need them, so importing this module is instantaneous.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import mdtraj
    import numpy
    import numpy.typing
    import openmm
    import openmm.app

# 0-based atom indices in the shipped PDB (order: ACE HH31 CH3 HH32 HH33 C O, ALA N H CA HA
# CB HB1 HB2 HB3 C O, NME N H CH3 HH31 HH32 HH33).
PHI_ATOMS: tuple[int, int, int, int] = (4, 6, 8, 14)  # C(ACE)-N-CA-C
PSI_ATOMS: tuple[int, int, int, int] = (6, 8, 14, 16)  # N-CA-C-N(NME)
HEAVY_ATOMS: tuple[int, ...] = (1, 4, 5, 6, 8, 10, 14, 15, 16, 18)  # the CG map's beads

_CV_ATOMS = {"phi": PHI_ATOMS, "psi": PSI_ATOMS}
_SOLVENTS = ("vacuum", "obc2")


def pdb_path() -> Path:
    """Path of the shipped, minimised C7eq PDB."""
    return Path(__file__).with_name("data") / "alanine_dipeptide.pdb"


@functools.lru_cache(maxsize=1)
def _pdb() -> openmm.app.PDBFile:
    """The shipped PDB, parsed once per process (topology and positions are read-only here)."""
    from openmm import app

    return app.PDBFile(str(pdb_path()))


def _dihedrals(xyz: numpy.ndarray, quartets: numpy.ndarray) -> numpy.ndarray:
    """Dihedral angles (n_frames, n_quartets) in (-pi, pi], IUPAC sign (as mdtraj.compute_dihedrals)."""
    import numpy as np

    p0, p1, p2, p3 = (xyz[:, quartets[:, k]] for k in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    c1, c2 = np.cross(b2, b3), np.cross(b1, b2)
    angle = np.arctan2(np.sum(b1 * c1, axis=-1) * np.linalg.norm(b2, axis=-1), np.sum(c1 * c2, axis=-1))
    return np.where(angle <= -np.pi, angle + 2 * np.pi, angle)


class AlanineDipeptide:
    """ACE-ALA-NME with amber14 (ff14SB), vacuum or OBC2 implicit solvent; NoCutoff, HBonds constraints."""

    n_atoms: int = 22
    shares_context = False  # one walker per OpenMM Context

    def __init__(self, solvent: str = "vacuum", cvs: Sequence[str] = ("phi", "psi")) -> None:
        if solvent not in _SOLVENTS:
            raise ValueError(f"Unknown solvent {solvent!r}: choose one of {', '.join(_SOLVENTS)}.")
        cvs = (cvs,) if isinstance(cvs, str) else tuple(cvs)
        if not cvs or len(set(cvs)) != len(cvs) or not set(cvs) <= _CV_ATOMS.keys():
            raise ValueError(f"cvs must be distinct names from {tuple(_CV_ATOMS)}, got {cvs!r}.")
        self.solvent = solvent
        self.cv_names: tuple[str, ...] = cvs
        self.cv_periodic: tuple[bool, ...] = (True,) * len(cvs)

    def topology(self) -> openmm.app.Topology:
        return _pdb().topology

    def create_system(self) -> openmm.System:
        """A new System: amber14-all.xml (+ implicit/obc2.xml for 'obc2'), NoCutoff, HBonds."""
        from openmm import app

        files = ["amber14-all.xml"] + (["implicit/obc2.xml"] if self.solvent == "obc2" else [])
        return app.ForceField(*files).createSystem(
            self.topology(), nonbondedMethod=app.NoCutoff, constraints=app.HBonds)

    def add_bias(self, system, grid) -> None:
        """Add the tabulated bias of (phi, psi) as a CustomCVForce of torsions."""
        import openmm

        from cgflow.guidance.bias import FORCE_GROUP

        force = openmm.CustomCVForce(f"bias({grid.clamped_arguments(list(self.cv_names))})")
        for name in self.cv_names:
            torsion = openmm.CustomTorsionForce("theta")
            torsion.addTorsion(*_CV_ATOMS[name], [])
            force.addCollectiveVariable(name, torsion)
        force.addTabulatedFunction("bias", grid.tabulated_function())
        force.setForceGroup(FORCE_GROUP)
        system.addForce(force)

    def initial_positions(self) -> numpy.ndarray:
        """The shipped C7eq minimum, (22, 3) float64 in nm (a fresh copy)."""
        from openmm import unit

        return _pdb().getPositions(asNumpy=True).value_in_unit(unit.nanometer).astype("float64")

    def cv_values(self, positions: numpy.typing.ArrayLike) -> numpy.ndarray:
        """Dihedral CVs (n_frames, n_cvs) in radians, (-pi, pi], for positions (n_frames, 22, 3) nm."""
        import numpy as np

        xyz = np.asarray(positions, dtype=np.float64)
        if xyz.ndim == 2:
            xyz = xyz[None]
        if xyz.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape (n_frames, {self.n_atoms}, 3), got {xyz.shape}.")
        return _dihedrals(xyz, np.array([_CV_ATOMS[cv] for cv in self.cv_names]))

    def mdtraj_topology(self) -> mdtraj.Topology:
        import mdtraj

        return mdtraj.Topology.from_openmm(self.topology())
