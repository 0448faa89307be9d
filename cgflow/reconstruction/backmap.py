"""All-atom structures from the flows: backmapped ensembles and hydrogens from heavy-atom beads.

Two uses of the same importance weights ``w = exp(-U/kT) / q`` (METHODS.md §2):

- :func:`resample_ensemble` draws structures from the (phi, psi) flow over the trusted grid
  points where F is low, and resamples them by their weights (sampling-importance-resampling):
  a grid cell ``b`` is proposed with probability ``P(b) ∝ exp(-F_b/kT)``, (phi, psi) uniformly
  inside it, the other ICs from ``q(. | phi, psi)``; the weight ``exp(-U_u/kT) / q / P(b)`` makes
  the resampled frames a draw from the Boltzmann distribution restricted to those cells. This
  is what ``ccg/backmapped.dcd`` holds.
- :func:`backmap_hydrogens` puts hydrogens on given heavy-atom configurations (the 10 CG beads)
  with the hydrogen flow q(H angles, torsions | heavy-atom ICs) (:func:`train_hydrogen_flow`,
  reverse KL on the OpenMM energy with heavy atoms from FG frames), drawing ``per_frame``
  candidates per frame and keeping one by its weight (1 = the flow's own sample), then moving
  the result onto the given heavy atoms (Kabsch).

Units: nm, rad, kJ/mol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp


def resample_ensemble(flow, energy, grid: np.ndarray, F: np.ndarray, cell: np.ndarray, kT: float,
                      frames: int, proposals: int, rng: np.random.Generator, chunk: int = 512) -> dict:
    """``frames`` structures resampled from ``proposals`` flow draws over the grid cells ``grid``
    (P, k) with free energies ``F`` (P,) kJ/mol and widths ``cell`` (k,); see the module docstring.

    Returns ``xyz`` (frames, N, 3) nm, ``cv`` (frames, k), ``energy_kJmol`` (frames,) (the physical
    energy U(R)), ``ess`` of the proposal weights, ``proposals`` and ``evaluations``.
    """
    import torch

    grid, F = np.asarray(grid, dtype=float), np.asarray(F, dtype=float)
    log_p = -F / kT
    log_p -= logsumexp(log_p)
    cells = rng.choice(len(grid), size=proposals, p=np.exp(log_p))
    s = grid[cells] + (rng.random((proposals, grid.shape[1])) - 0.5) * np.asarray(cell, dtype=float)
    before = energy.evaluations
    log_w, xyz_all, u_all = np.empty(proposals), [], []
    with torch.no_grad():
        for start in range(0, proposals, chunk):
            s_t = torch.as_tensor(s[start:start + chunk])
            y, logq = flow.rsample_and_log_prob(s_t)
            xyz, u, log_j = energy.parts(s_t, y)
            xyz_all.append(xyz.numpy())
            u_all.append(u.numpy())
            log_w[start:start + len(s_t)] = (-(u - kT * log_j) / kT - logq).numpy()
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf) - log_p[cells]
    from cgflow.reconstruction.free_energy import kish_ess

    w = np.exp(log_w - log_w.max())
    pick = rng.choice(proposals, size=frames, p=w / w.sum())
    xyz, u = np.concatenate(xyz_all)[pick], np.concatenate(u_all)[pick]
    return {"xyz": xyz, "cv": s[pick], "energy_kJmol": u, "ess": kish_ess(log_w), "proposals": proposals,
            "distinct_frames": int(len(np.unique(pick))), "evaluations": energy.evaluations - before}


def write_structures(xyz: np.ndarray, topology, dcd: Path, pdb: Path) -> None:
    """``xyz`` (n, N, 3) nm as a DCD trajectory plus its first frame as PDB (the topology for
    ``mdtraj.load(dcd, top=pdb)``), both atomically."""
    import mdtraj

    from cgflow.io import atomic_path

    traj = mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), topology)
    with atomic_path(dcd) as tmp:
        traj.save_dcd(str(tmp))
    with atomic_path(pdb) as tmp:
        traj[0].save_pdb(str(tmp))


# --- hydrogens from heavy-atom beads --------------------------------------------------------------
def hydrogen_setup(solvent: str = "vacuum", kT: float | None = None, temperature: float = 300.0):
    """(AlanineDipeptide, its System, the hydrogen ZMatrixMap, ZMatrixEnergy) for ``solvent``."""
    from cgflow.reconstruction.alanine import ZMatrixEnergy, hydrogen_map
    from cgflow.systems.alanine import AlanineDipeptide
    from cgflow.systems.toy import KB

    ala = AlanineDipeptide(solvent=solvent)
    system = ala.create_system()
    hmap = hydrogen_map(system, ala.initial_positions())
    return ala, system, hmap, ZMatrixEnergy(hmap, system, KB * temperature if kT is None else kT)


def hydrogen_flow(hmap, transforms: int = 4, hidden=(64, 64), bins: int = 8, seed: int = 0):
    """An untrained q(H ICs | heavy-atom ICs): bonds and angles of the heavy atoms standardised
    around the reference structure in the IC units of :data:`~cgflow.reconstruction.alanine.IC_SCALE`,
    heavy torsions as (sin, cos); coupling layers (two passes)."""
    import torch

    from cgflow.reconstruction.alanine import IC_SCALE, ic_values
    from cgflow.reconstruction.flow import ConditionalFlow
    from cgflow.systems.alanine import AlanineDipeptide

    ref = ic_values(AlanineDipeptide().initial_positions(), hmap.given)[0]
    torch.manual_seed(seed)
    return ConditionalFlow(hmap.features, hmap.n_given, transforms=transforms, hidden=hidden, bins=bins, passes=2,
                           s_loc=ref, s_scale=[IC_SCALE[kind] for kind, _ in hmap.given],
                           periodic=hmap.given_periodic)


def heavy_frames(xyz: np.ndarray) -> np.ndarray:
    """Heavy-atom positions (n, 10, 3) or all-atom (n, 22, 3) -> (n, 22, 3) with hydrogens at 0
    (only the heavy atoms are read from it)."""
    from cgflow.systems.alanine import HEAVY_ATOMS

    xyz = np.asarray(xyz, dtype=float)
    if xyz.shape[1] == 22:
        return xyz
    full = np.zeros((len(xyz), 22, 3))
    full[:, list(HEAVY_ATOMS)] = xyz
    return full


def train_hydrogen_flow(flow, energy, heavy_xyz: np.ndarray, settings, checkpoint: Path | None = None) -> dict:
    """Train ``flow`` by reverse KL on ``energy`` with the heavy atoms of the FG frames ``heavy_xyz``
    ((n, 10, 3) beads or (n, 22, 3)) as conditioning; the generic trainer, checkpoints included."""
    from cgflow.reconstruction.training import Conditioning, train

    s = energy.geometry.given_values(heavy_frames(heavy_xyz))
    return train(flow, energy, Conditioning.from_samples(s), settings, energy.kT, checkpoint=checkpoint,
                 signature_extra={"hydrogens": energy.geometry.to_json()})


def backmap_hydrogens(flow, energy, heavy_xyz: np.ndarray, per_frame: int, rng: np.random.Generator) -> dict:
    """All-atom structures (n, 22, 3) nm for heavy-atom frames ``heavy_xyz`` (see the module docstring).

    Also returns ``energy_kJmol`` (n,) of the chosen structures and ``ess`` (n,) of each frame's
    ``per_frame`` candidate weights.
    """
    import torch

    from cgflow.reconstruction.alanine import kabsch_fit
    from cgflow.reconstruction.free_energy import kish_ess
    from cgflow.systems.alanine import HEAVY_ATOMS

    target = heavy_frames(heavy_xyz)
    s = torch.as_tensor(energy.geometry.given_values(target))
    n, kT = len(target), energy.kT
    with torch.no_grad():
        y, logq = flow.rsample_and_log_prob(s, n=per_frame)  # (per_frame, n, .)
        s_rep = s.expand(per_frame, -1, -1).reshape(per_frame * n, -1)
        y = y.reshape(per_frame * n, -1)
        xyz, u, log_j = energy.parts(s_rep, y)
        log_w = (-(u - kT * log_j) / kT - logq.reshape(-1)).numpy().reshape(per_frame, n)
        xyz = xyz.numpy().reshape(per_frame, n, 22, 3)
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    w = np.exp(log_w - log_w.max(axis=0))
    w /= w.sum(axis=0)
    pick = np.array([rng.choice(per_frame, p=w[:, i]) for i in range(n)]) if per_frame > 1 else np.zeros(n, int)
    chosen = xyz[pick, np.arange(n)]
    return {"xyz": kabsch_fit(chosen, target, HEAVY_ATOMS), "energy_kJmol": u.numpy().reshape(per_frame, n)[pick, np.arange(n)],
            "ess": np.array([kish_ess(log_w[:, i]) for i in range(n)])}
