"""Checkpointed Langevin sampling of walkers with OpenMM.

A *replica* is one OpenMM Context and the walkers it holds: all of a process's walkers for a
toy (independent particles), one walker for a molecule. A replica runs in chunks of
``checkpoint_interval`` steps; each chunk is one atomically written ``.npz`` holding the
frames recorded in it and an OpenMM checkpoint (positions, velocities, step and random-number
state) taken at its end. A killed job restarted on the same work folder reloads the last
chunk's checkpoint and goes on, so the finished output is the one an uninterrupted run gives.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgflow.io import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MDSettings:
    """Langevin MD settings of one round (OpenMM units: K, ps, 1/ps)."""

    temperature: float
    timestep: float
    friction: float
    steps: int
    equilibration: int
    report_interval: int
    checkpoint_interval: int

    @classmethod
    def from_config(cls, sampling) -> "MDSettings":
        return cls(sampling.temperature, sampling.timestep, sampling.friction, sampling.steps,
                   sampling.equilibration, sampling.report_interval, sampling.checkpoint_interval)


@dataclass
class ReplicaFrames:
    """Frames of one replica's walkers: production step, positions (nm), CVs, energies (kJ/mol)."""

    walkers: list[int]
    step: np.ndarray  # (n_frames,)
    positions: np.ndarray  # (n_frames, n_particles, 3)
    cv: np.ndarray  # (n_frames, n_walkers, n_cvs)
    potential: np.ndarray  # (n_frames, n_walkers)
    bias: np.ndarray  # (n_frames, n_walkers)
    wall_s: float
    forces: np.ndarray | None = None  # (n_frames, n_particles, 3) kJ/mol/nm, FG forces without the bias (record_forces)


def replica_seed(seed: int, round_index: int, first_walker: int) -> int:
    """A non-zero OpenMM seed (0 would mean 'random') from the campaign seed and walker block."""
    state = np.random.SeedSequence([seed, round_index, first_walker]).generate_state(1)[0]
    return int(state % (2**31 - 2)) + 1


def replicas(system, walkers: list[int]) -> list[list[int]]:
    """Group walkers into Contexts: all in one for toys, one each for molecules."""
    if system.shares_context:
        return [list(walkers)] if walkers else []
    return [[w] for w in walkers]


def make_context(system, n_walkers: int, settings: MDSettings, platform: str, properties: dict, seed: int = 1,
                 bias=None, positions: np.ndarray | None = None):
    """A Context (with the bias, if any) at ``positions`` (default: the system's start); the
    seed must reach the integrator before the Context exists, as OpenMM reads it only then."""
    import openmm
    import openmm.unit as u

    omm_system = system.create_system(n_walkers) if system.shares_context else system.create_system()
    if bias is not None:
        if system.shares_context:
            system.add_bias(omm_system, bias, n_walkers)
        else:
            system.add_bias(omm_system, bias)
    integrator = openmm.LangevinMiddleIntegrator(
        settings.temperature * u.kelvin, settings.friction / u.picosecond, settings.timestep * u.picoseconds
    )
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(omm_system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    if positions is None:
        positions = system.initial_positions(n_walkers) if system.shares_context else system.initial_positions()
    context.setPositions(positions)
    return context, integrator


def _observe(system, context, bias):
    """Positions (nm), CVs (n_walkers, d), FG potential and bias energies (n_walkers,), kJ/mol."""
    import openmm.unit as u

    from cgflow.guidance.bias import FORCE_GROUP

    kJ = u.kilojoule_per_mole
    if system.shares_context:
        pos = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        cv = system.cv_values(pos)
        return pos, cv, system.energies(pos), bias(cv) if bias is not None else np.zeros(len(pos))
    state = context.getState(getPositions=True, getEnergy=True, groups=set(range(32)) - {FORCE_GROUP})
    pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    energy = state.getPotentialEnergy().value_in_unit(kJ)
    bias_energy = 0.0
    if bias is not None:
        bias_energy = context.getState(getEnergy=True, groups={FORCE_GROUP}).getPotentialEnergy().value_in_unit(kJ)
    return pos, system.cv_values(pos[None]), np.array([energy]), np.array([bias_energy])


def _fg_forces(context) -> np.ndarray:
    """FG forces (n_particles, 3) kJ/mol/nm without the bias force group."""
    import openmm.unit as u

    from cgflow.guidance.bias import FORCE_GROUP

    state = context.getState(getForces=True, groups=set(range(32)) - {FORCE_GROUP})
    return state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.npz"))


def run_replica(system, walkers: list[int], settings: MDSettings, platform: str, properties: dict,
                seed: int, folder: Path, progress=None, bias=None, start: np.ndarray | None = None,
                record_forces: bool = False) -> ReplicaFrames:
    """Run (or resume) one replica in ``folder`` under ``bias`` from ``start`` (nm); return its frames.

    ``record_forces`` also stores each frame's unbiased FG forces (for force matching of bead CG models).
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = len(walkers)
    context, integrator = make_context(system, n, settings, platform, properties, seed, bias, start)
    done = _chunks(folder)
    total = settings.equilibration + settings.steps
    if done:
        with np.load(done[-1]) as last:
            context.loadCheckpoint(last["checkpoint"].tobytes())
            step = int(last["end_step"])
        log.info("walkers %d-%d: resuming from step %d of %d", walkers[0], walkers[-1], step, total)
    else:
        import openmm.unit as u

        context.setVelocitiesToTemperature(settings.temperature * u.kelvin, seed)
        step = 0
    ri, ci, eq = settings.report_interval, settings.checkpoint_interval, settings.equilibration
    while step < total:
        t0 = time.perf_counter()
        end = min(total, (step // ci + 1) * ci)
        steps, pos, cvs, pots, biases, frcs = [], [], [], [], [], []
        while step < end:
            next_frame = eq + ((max(step - eq, 0) // ri) + 1) * ri
            target = min(end, next_frame)
            integrator.step(target - step)
            step = target
            if step > eq and (step - eq) % ri == 0:
                p, c, e, b = _observe(system, context, bias)
                steps.append(step - eq)
                pos.append(p)
                cvs.append(c)
                pots.append(e)
                biases.append(b)
                if record_forces:
                    frcs.append(_fg_forces(context))
        wall = time.perf_counter() - t0
        n_particles = context.getSystem().getNumParticles()
        n_cv = len(system.cv_names)
        with atomic_path(folder / f"chunk-{end:010d}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    end_step=end,
                    step=np.asarray(steps, dtype=np.int64),
                    positions=np.asarray(pos, dtype=float).reshape(-1, n_particles, 3),
                    cv=np.asarray(cvs, dtype=float).reshape(-1, n, n_cv),
                    potential=np.asarray(pots, dtype=float).reshape(-1, n),
                    bias=np.asarray(biases, dtype=float).reshape(-1, n),
                    wall_s=wall,
                    **({"forces": np.asarray(frcs, dtype=float).reshape(-1, n_particles, 3)} if record_forces else {}),
                    checkpoint=np.frombuffer(context.createCheckpoint(), dtype=np.uint8),
                )
        if progress is not None:
            progress(walkers, end, total, wall)
    del context, integrator
    return _load_frames(folder, walkers)


def _load_frames(folder: Path, walkers: list[int]) -> ReplicaFrames:
    parts = {k: [] for k in ("step", "positions", "cv", "potential", "bias")}
    wall = 0.0
    forces = []
    for chunk in _chunks(folder):
        with np.load(chunk) as data:
            for k in parts:
                parts[k].append(data[k])
            wall += float(data["wall_s"])
            if "forces" in data.files:
                forces.append(data["forces"])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return ReplicaFrames(walkers=walkers, step=cat["step"], positions=cat["positions"], cv=cat["cv"],
                         potential=cat["potential"], bias=cat["bias"], wall_s=wall,
                         forces=np.concatenate(forces) if forces and len(forces) == len(parts["step"]) else None)


def open_workdir(workdir: Path, job: dict, choose_platform) -> str:
    """Reuse ``workdir`` if it holds the same ``job`` (config, round, walker layout) and return
    the platform its checkpoints were made on; otherwise start it afresh with ``choose_platform()``.
    """
    path = workdir / "manifest.json"
    if workdir.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("job") == job:
            return manifest["platform"]
        log.info("discarding %s: it belongs to another config or walker layout", workdir)
        shutil.rmtree(workdir)
    platform = choose_platform()
    workdir.mkdir(parents=True)
    write_json(path, {"job": job, "platform": platform})
    return platform
