"""Linear CG maps: bead positions ``r = M R`` and the matching force map ``F = M_f f``.

A map is a (n_beads, n_atoms) coordinate matrix ``M`` (rows sum to 1) and a force matrix
``M_f``. For a *slice* map (each bead is one atom) with hydrogens held by constraints, the
force map sums the forces of each bead atom and the hydrogens bonded to it: the constraint
forces are then internal to a bead and cancel, so ``M_f f`` is a valid instantaneous
estimator of the mean force (Noid et al. 2008; mlcg's "aggregated" force map).
Two maps ship: alanine dipeptide's 10 heavy atoms, and the identity map (one bead per
particle) for the Lennard-Jones fluid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CGMap:
    """A linear map: ``coord`` (n_beads, n_atoms), ``force`` (n_beads, n_atoms), bead type ids and names."""

    coord: np.ndarray
    force: np.ndarray
    bead_types: tuple[int, ...]
    type_names: tuple[str, ...]
    atoms: tuple[int, ...] = ()

    @property
    def n_beads(self) -> int:
        return self.coord.shape[0]

    def map_positions(self, positions: np.ndarray) -> np.ndarray:
        """(n_frames, n_atoms, 3) -> (n_frames, n_beads, 3)."""
        return np.einsum("ba,fad->fbd", self.coord, positions)

    def map_forces(self, forces: np.ndarray) -> np.ndarray:
        """(n_frames, n_atoms, 3) -> (n_frames, n_beads, 3)."""
        return np.einsum("ba,fad->fbd", self.force, forces)


def identity_map(n_particles: int) -> CGMap:
    """One bead per particle, all of one type (the LJ fluid)."""
    eye = np.eye(n_particles)
    return CGMap(eye, eye.copy(), (0,) * n_particles, ("LJ",), tuple(range(n_particles)))


def slice_map(topology, atoms) -> CGMap:
    """Beads on ``atoms`` of an OpenMM topology; bead type from element and hybridisation (bond count).

    The force map adds each bonded hydrogen's force to its heavy atom.
    """
    atom_list = list(topology.atoms())
    n = len(atom_list)
    neighbours = {i: set() for i in range(n)}
    for a, b in topology.bonds():
        neighbours[a.index].add(b.index)
        neighbours[b.index].add(a.index)
    coord = np.zeros((len(atoms), n))
    force = np.zeros((len(atoms), n))
    names = []
    for k, i in enumerate(atoms):
        coord[k, i] = force[k, i] = 1.0
        for j in neighbours[i]:
            if atom_list[j].element.symbol == "H":
                force[k, j] = 1.0
        elem = atom_list[i].element.symbol
        hyb = {4: "sp3", 3: "sp2", 2: "sp2" if elem != "O" else "sp3", 1: "sp2" if elem == "O" else "sp"}[len(neighbours[i])]
        names.append(f"{elem}_{hyb}")
    type_names = tuple(sorted(set(names)))
    types = tuple(type_names.index(t) for t in names)
    return CGMap(coord, force, types, type_names, tuple(atoms))


def bead_bonds(topology, atoms) -> list[tuple[int, int]]:
    """Bead pairs (bead indices) whose atoms are bonded in the topology."""
    index = {a: k for k, a in enumerate(atoms)}
    out = []
    for a, b in topology.bonds():
        if a.index in index and b.index in index:
            out.append(tuple(sorted((index[a.index], index[b.index]))))
    return sorted(out)


def alanine_map() -> CGMap:
    """The 10 heavy atoms of alanine dipeptide (cgflow.systems.alanine.HEAVY_ATOMS)."""
    from cgflow.systems.alanine import HEAVY_ATOMS, AlanineDipeptide

    return slice_map(AlanineDipeptide().topology(), HEAVY_ATOMS)


def alanine_bead_topology():
    """mdtraj topology of the 10 heavy-atom beads, so CG trajectories are mdtraj-readable."""
    from cgflow.systems.alanine import HEAVY_ATOMS, AlanineDipeptide

    return AlanineDipeptide().mdtraj_topology().subset(list(HEAVY_ATOMS))
