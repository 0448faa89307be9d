"""Vectorised Langevin MD of bead models in torch (BAOAB), many replicas at once.

Positions (R, N, 3) nm, masses (N,) amu, energies kJ/mol (so forces are amu nm/ps^2), time
in ps. BAOAB (Leimkuhler and Matthews 2013) with one force evaluation per step. A cubic
periodic box wraps positions. Blow-up detection: a non-finite energy or force, or a bead
moving more than ``max_displacement`` nm in one step, raises :class:`CGBlowUp`, whose message
names the step, the replica and the time step to lower, so a job fails loudly instead of
writing garbage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from cgflow.io import PROGRESS_EVERY_S

log = logging.getLogger(__name__)

KB = 0.0083144626181532


class CGBlowUp(RuntimeError):
    """CG MD became unstable (non-finite forces or a runaway bead)."""


@dataclass
class CGTrajectory:
    positions: torch.Tensor  # (n_frames, R, N, 3)
    energies: torch.Tensor  # (n_frames, R)
    steps: int
    wall_s: float


def langevin_md(model, x0: torch.Tensor, masses, temperature: float, timestep: float, n_steps: int,
                friction: float = 1.0, report_interval: int = 100, box: float | None = None,
                generator: torch.Generator | None = None, max_displacement: float = 0.05,
                v0: torch.Tensor | None = None) -> CGTrajectory:
    """Run ``n_steps`` of BAOAB from ``x0`` (R, N, 3); record every ``report_interval`` steps.

    ``model`` is a bead potential (evaluated eagerly in x0's dtype, on x0's device) or a
    :class:`BeadForces` (its precision and device, compiled or not), which is synced to its model
    first. ``generator`` must live on that device. The trajectory comes back on the CPU.
    """
    import time

    from cgflow.sampling.cg_forces import BeadForces, eager_forces

    if isinstance(model, BeadForces):
        model.sync()
        forces, x = model, x0.detach().to(device=model.device, dtype=model.dtype)
    else:
        forces, x = (lambda y: eager_forces(model, y)), x0.detach().clone()
    kT = KB * temperature
    m = torch.as_tensor(masses, dtype=x.dtype, device=x.device).reshape(1, -1, 1)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device) * torch.sqrt(kT / m) if v0 is None \
        else v0.to(device=x.device, dtype=x.dtype)
    c1 = math.exp(-friction * timestep)
    c2 = torch.sqrt((1 - c1**2) * kT / m)
    h = timestep
    e, f = forces(x)
    frames, energies = [], []
    t0 = last_log = time.perf_counter()
    for step in range(1, n_steps + 1):
        x_prev = x
        v = v + 0.5 * h * f / m
        x = x + 0.5 * h * v
        v = c1 * v + c2 * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        x = x + 0.5 * h * v
        e, f = forces(x)
        v = v + 0.5 * h * f / m
        disp = (x - x_prev).abs().amax(dim=(1, 2))
        disp = torch.where(torch.isfinite(disp), disp, torch.full_like(disp, float("inf")))
        bad = ~torch.isfinite(e) | ~torch.isfinite(f).all(dim=(1, 2)) | (disp > max_displacement)
        if bad.any():
            r = int(bad.nonzero()[0])
            raise CGBlowUp(f"CG MD blew up at step {step} (t = {step * h:g} ps): replica {r} has U = "
                           f"{e[r].item():.4g} kJ/mol and a bead moved {disp[r].item():.3g} nm in one step "
                           f"(limit {max_displacement} nm); lower the CG time step (now {h:g} ps) or check the prior")
        if box is not None:
            x = torch.remainder(x, box)
        if step % report_interval == 0:
            frames.append(x.cpu())
            energies.append(e.cpu())
            if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                last_log = time.perf_counter()
                rate = step / (last_log - t0)
                log.info("CG MD: %d/%d steps of %d replicas, %.3g steps/s, ETA %.0f s", step, n_steps, x.shape[0],
                         rate, (n_steps - step) / rate)
    wall = time.perf_counter() - t0
    pos = torch.stack(frames) if frames else torch.zeros((0, *x.shape), dtype=x.dtype)
    en = torch.stack(energies) if energies else torch.zeros((0, x.shape[0]), dtype=x.dtype)
    return CGTrajectory(pos, en, n_steps, wall)


def save_trajectory(traj: CGTrajectory, path, topology=None, box: float | None = None) -> None:
    """Save as DCD (+ PDB topology beside it) when ``topology`` (mdtraj) is given, else NPZ; atomic."""
    from pathlib import Path

    import numpy as np

    from cgflow.io import atomic_path, write_npz

    path = Path(path)
    xyz = traj.positions.transpose(0, 1).reshape(-1, traj.positions.shape[2], 3).numpy()  # replica-major
    if topology is None:
        write_npz(path, positions=xyz, energies=traj.energies.T.numpy(), box=box or 0.0)
        return
    import mdtraj

    t = mdtraj.Trajectory(xyz.astype(np.float32), topology)
    with atomic_path(path) as tmp:
        t.save_dcd(str(tmp))
    with atomic_path(path.with_suffix(".pdb")) as tmp:
        t[0].save_pdb(str(tmp))
