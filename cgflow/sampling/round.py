"""One sampling round: run this process's walkers and write ``samples.parquet`` (+ trajectories).

``samples.parquet`` has one row per saved frame and walker: ``walker``, ``step`` (production
MD step), ``time_ps``, the CV columns (nm for toys, radians for dihedrals),
``potential_energy_kJmol`` (the FG potential without bias), ``bias_energy_kJmol``, and for toys
the particle position ``x_nm``, ``y_nm``, ``z_nm``. Its metadata (key ``cgflow``) carries the
provenance: config hash, seed, round, platform, package versions, wall time.

When the bead-CG stage learns from the rounds (``cg.fg_data: rounds``), ``forces.npz`` holds
every frame's positions (nm) and FG forces without the bias (kJ/mol/nm), as ``walker``,
``step``, ``positions``, ``forces`` in the row order of ``samples.parquet``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cgflow.io import package_versions, remove_tree, write_parquet
from cgflow.sampling.engine import (MDSettings, Progress, ReplicaFrames, make_context, open_run, replica_seed, replicas,
                                    run_replica)
from cgflow.sampling.platform import platform_properties

log = logging.getLogger(__name__)


def walker_block(n_walkers: int, size: int, rank: int) -> list[int]:
    """The contiguous, deterministic share of walkers that MPI rank ``rank`` of ``size`` owns."""
    base, extra = divmod(n_walkers, size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def sample_round(campaign, round_index: int, out_dir: Path, rank: int = 0, size: int = 1,
                 bias=None, starts: np.ndarray | None = None, steps: int | None = None, hills=None, comm=None):
    """Run this rank's walkers for one round under ``bias`` from ``starts`` (walkers, particles,
    3; nm); return their frames and the platform (rank 0 gathers and writes). With ``hills``
    (a :class:`cgflow.sampling.hills.Hills` on ``bias``'s grid) the walkers deposit into it as
    they go, all ranks together over ``comm``."""
    sampling = campaign.sampling
    system = campaign.system.build()
    settings = MDSettings.from_config(sampling)
    if steps is not None:
        settings = replace(settings, steps=steps)
    walkers = walker_block(sampling.walkers, size, rank)
    workdir = Path(out_dir) / ".work" / f"rank-{rank:03d}-of-{size:03d}"
    record_forces = campaign.records_forces
    applied = hills.base if hills is not None else bias  # a hills round's zero grid too: H lives on its grid
    job = {"config": campaign.stage_hash("sampling"), "round": round_index, "walkers": walkers,
           "steps": settings.steps,
           "bias": None if applied is None else _digest(applied.values, applied.lower, applied.upper, applied.periodic),
           "starts": _digest(starts), "forces": record_forces,
           "hills": hills.settings.as_dict() if hills is not None else None}
    if hills is not None:
        bias = hills.total()
    groups = replicas(system, walkers)

    def start_of(group):
        if starts is None:
            return None
        return starts[group, 0, :] if system.shares_context else starts[group[0]]

    def trial(name):
        return make_context(system, len(groups[0]) if groups else 1, settings, name, platform_properties(name), 1,
                            bias, start_of(groups[0]) if groups else None)

    platform, properties = open_run(workdir, job, sampling, trial)
    log.info("rank %d of %d: walkers %s on %s %s", rank, size,
             f"{walkers[0]}-{walkers[-1]}" if walkers else "none (more ranks than walkers)", platform, properties)
    progress = Progress(len(walkers) * (settings.steps + settings.equilibration))
    seeds = [replica_seed(campaign.seed, round_index, group[0]) for group in groups]
    if hills is not None:
        from cgflow.sampling.hills import run_with_hills

        frames = run_with_hills(system, groups, settings, platform, properties, seeds, workdir, hills,
                                [start_of(g) for g in groups], record_forces, progress, comm)
    else:
        frames = [run_replica(system, group, settings, platform, properties, seed, workdir / f"replica-{group[0]:05d}",
                              progress, bias, start_of(group), record_forces)
                  for group, seed in zip(groups, seeds)]
    return frames, platform


def zero_bias(campaign):
    """A bias of zero on the grid the CG bias would have (guidance.bias_grid points on the CV domain)."""
    from cgflow.analysis.campaign import cv_domain
    from cgflow.guidance.bias import BiasGrid

    lower, upper, periodic = cv_domain(campaign)
    return BiasGrid.zeros(campaign.system.cv_names, lower, upper, periodic, campaign.guidance.bias_grid)


def _digest(array, *also) -> str | None:
    """A short hash of ``array`` (its shape included) and of the plain values ``also``; None for None."""
    import hashlib

    if array is None:
        return None
    array = np.ascontiguousarray(array)
    return hashlib.sha256(repr((array.shape, *also)).encode() + array.tobytes()).hexdigest()[:16]


def frames_table(frames: list[ReplicaFrames], cv_names, timestep: float, toy: bool):
    """One DataFrame row per (frame, walker), sorted by walker then step."""
    import pandas as pd

    parts = []
    for fr in frames:
        n_frames, n_walkers = fr.potential.shape
        cols = {
            "walker": np.repeat(np.asarray(fr.walkers, dtype=np.int32)[None, :], n_frames, 0).ravel(),
            "step": np.repeat(fr.step[:, None], n_walkers, 1).ravel(),
        }
        cols["time_ps"] = cols["step"] * timestep
        for j, name in enumerate(cv_names):
            cols[name] = fr.cv[:, :, j].ravel()
        cols["potential_energy_kJmol"] = fr.potential.ravel()
        cols["bias_energy_kJmol"] = fr.bias.ravel()
        if toy:
            for j, c in enumerate("xyz"):
                cols[f"{c}_nm"] = fr.positions[:, :, j].ravel()
        parts.append(pd.DataFrame(cols))
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["walker", "step"], kind="stable").reset_index(drop=True)


def write_forces(frames: list[ReplicaFrames], path: Path) -> None:
    """``forces.npz`` of one molecule round (one walker per replica), rows ordered as samples.parquet."""
    from cgflow.io import write_npz

    ordered = sorted(frames, key=lambda fr: fr.walkers[0])
    walker = np.concatenate([np.full(len(fr.step), fr.walkers[0], dtype=np.int32) for fr in ordered])
    write_npz(path, walker=walker, step=np.concatenate([fr.step for fr in ordered]),
              positions=np.concatenate([fr.positions for fr in ordered]),
              forces=np.concatenate([fr.forces for fr in ordered]))


def write_trajectories(system, frames: list[ReplicaFrames], traj_dir: Path, timestep: float) -> None:
    """One DCD per walker plus ``topology.pdb`` (mdtraj.load(dcd, top=pdb) reads them)."""
    import mdtraj as md

    top = system.mdtraj_topology()
    staging = traj_dir.with_name(f".{traj_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for fr in frames:
        traj = md.Trajectory(fr.positions.astype(np.float32), top, time=fr.step * timestep)
        traj[:1].save_pdb(str(staging / "topology.pdb"))
        traj.save_dcd(str(staging / f"walker-{fr.walkers[0]:04d}.dcd"))
    shutil.rmtree(traj_dir, ignore_errors=True)
    staging.rename(traj_dir)


def run(campaign, round_index: int, out_dir: Path, bias_path: Path | None = None,
        starts_path: Path | None = None, steps: int | None = None, hills: bool = False) -> Path:
    """The ``cgflow sample`` action: sample under the bias in ``bias_path`` (if any) from the
    walker starts in ``starts_path`` (if any), then write samples.parquet (and traj/) atomically.
    ``hills``: a round of the campaign, which deposits hills on its bias when ``guidance.hills``
    is on (see cgflow.sampling.hills) and writes them to hills.npz."""
    from cgflow.guidance.bias import BiasGrid
    from cgflow.sampling.hills import FILE as HILLS_FILE, HillSettings, Hills
    from cgflow.sampling.mpi import aborting_all_on_error, world

    comm, rank, size = world()
    t0 = time.perf_counter()
    with aborting_all_on_error(comm):
        bias = BiasGrid.load(bias_path, campaign.system.cv_names) if bias_path else None
        settings = HillSettings.from_campaign(campaign) if hills else None
        layer = Hills(bias if bias is not None else zero_bias(campaign), settings) if settings else None
        starts = None
        if starts_path:
            with np.load(starts_path) as data:
                starts = data["positions"]
        frames, platform = sample_round(campaign, round_index, out_dir, rank, size, bias, starts, steps, layer, comm)
        gathered = comm.gather((frames, platform), root=0) if comm is not None else None
    if comm is not None:
        if rank != 0:
            return out_dir / "samples.parquet"
        frames = [f for part, _ in gathered for f in part]
        platform = ",".join(sorted({p for _, p in gathered}))
    system = campaign.system
    table = frames_table(frames, system.cv_names, campaign.sampling.timestep, system.is_toy)
    provenance = {
        "sampling_hash": campaign.stage_hash("sampling"),
        "seed": campaign.seed,
        "round": round_index,
        "platform": platform,
        "ranks": size,
        "fg_steps": campaign.sampling.walkers * ((steps or campaign.sampling.steps) + campaign.sampling.equilibration),
        "bias": str(bias_path) if bias_path else None,
        "hills": str(Path(out_dir) / HILLS_FILE) if layer is not None else None,
        "md_wall_s": sum(f.wall_s for f in frames),
        "wall_s": time.perf_counter() - t0,
        "versions": package_versions(),
    }
    out_dir = Path(out_dir)
    if not system.is_toy:
        write_trajectories(system.build(), frames, out_dir / "traj", campaign.sampling.timestep)
    if campaign.records_forces:
        write_forces(frames, out_dir / "forces.npz")
    if layer is not None:
        layer.save(out_dir / HILLS_FILE, campaign.sampling.equilibration)
    write_parquet(table, out_dir / "samples.parquet", provenance)
    remove_tree(out_dir / ".work")
    log.info("wrote %s: %d frames of %d walkers on %s", out_dir / "samples.parquet", len(table),
             campaign.sampling.walkers, platform)
    return out_dir / "samples.parquet"
