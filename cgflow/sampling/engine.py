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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgflow.io import PROGRESS_EVERY_S, remove_tree, write_json, write_npz

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


def fg_frame(context, bias_group: int | None, forces: bool = False):
    """One frame of a Context that holds one molecule: positions (nm); its potential energy
    without the bias and the bias energy (0 when ``bias_group`` is None), kJ/mol; with ``forces``
    the forces without the bias (n_particles, 3), kJ/mol/nm, else None. All but the bias energy
    come from one State, as each query has a fixed cost."""
    import openmm.unit as u

    kJ = u.kilojoule_per_mole
    state = context.getState(getPositions=True, getEnergy=True, getForces=forces,
                             groups=set(range(32)) - {bias_group})
    pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    fg_forces = state.getForces(asNumpy=True).value_in_unit(kJ / u.nanometer) if forces else None
    bias_energy = 0.0
    if bias_group is not None:
        bias_energy = context.getState(getEnergy=True, groups={bias_group}).getPotentialEnergy().value_in_unit(kJ)
    return pos, state.getPotentialEnergy().value_in_unit(kJ), bias_energy, fg_forces


def _observe(system, context, bias, forces: bool):
    """One frame: positions (nm); a toy's CVs (n_walkers, d), None for a molecule, whose CVs
    :meth:`Replica.save_chunk` computes for the whole chunk at once (per frame they cost more than
    ten MD steps of alanine dipeptide); FG potential and bias energies (n_walkers,), kJ/mol; and
    with ``forces`` the FG forces without the bias (n_particles, 3), kJ/mol/nm, else None."""
    import openmm.unit as u

    from cgflow.guidance.bias import FORCE_GROUP

    if not system.shares_context:
        pos, potential, bias_energy, fg_forces = fg_frame(context, FORCE_GROUP if bias is not None else None, forces)
        return pos, None, np.array([potential]), np.array([bias_energy]), fg_forces
    # a toy's walkers share the Context: their energies and bias come from the CVs, not a State
    state = context.getState(getPositions=True, getForces=forces, groups=set(range(32)) - {FORCE_GROUP})
    pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    fg_forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer) if forces else None
    cv = system.cv_values(pos)
    return pos, cv, system.energies(pos), bias(cv) if bias is not None else np.zeros(len(pos)), fg_forces


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.npz"))


class Replica:
    """One Context's walkers, advanced step by step with their frames buffered and saved per chunk.

    Opening resumes from the last chunk in ``folder`` (or the chunk ending at ``resume_at``,
    dropping any later ones: the shared-hills driver rolls every replica back to its last
    common checkpoint).
    """

    def __init__(self, system, walkers: list[int], settings: MDSettings, platform: str, properties: dict,
                 seed: int, folder: Path, bias=None, start: np.ndarray | None = None, record_forces: bool = False,
                 resume_at: int | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.system, self.walkers, self.settings, self.folder = system, walkers, settings, folder
        self.bias, self.record_forces = bias, record_forces
        self.context, self.integrator = make_context(system, len(walkers), settings, platform, properties, seed,
                                                     bias, start)
        done = _chunks(folder)
        if resume_at is not None:
            for later in [c for c in done if _chunk_end(c) > resume_at]:
                later.unlink()
            done = [c for c in done if _chunk_end(c) <= resume_at]
        check_consecutive(folder, [_chunk_end(c) for c in done], chunk_ends(settings))
        self.total = settings.equilibration + settings.steps
        if done:
            with np.load(done[-1]) as last:
                self.context.loadCheckpoint(last["checkpoint"].tobytes())
                self.step = int(last["end_step"])
            log.info("walkers %d-%d: resuming from step %d of %d", walkers[0], walkers[-1], self.step, self.total)
        else:
            import openmm.unit as u

            self.context.setVelocitiesToTemperature(settings.temperature * u.kelvin, seed)
            self.step = 0
        self._reset()

    def _reset(self) -> None:
        self.buffer = {k: [] for k in ("step", "positions", "cv", "potential", "bias", "forces")}
        self.wall = 0.0

    def advance(self, target: int) -> None:
        """Run to step ``target``, saving a frame every ``report_interval`` steps after equilibration."""
        ri, eq = self.settings.report_interval, self.settings.equilibration
        t0 = time.perf_counter()
        while self.step < target:
            next_frame = eq + ((max(self.step - eq, 0) // ri) + 1) * ri
            stop = min(target, next_frame)
            self.integrator.step(stop - self.step)
            self.step = stop
            if self.step > eq and (self.step - eq) % ri == 0:
                p, c, e, b, f = _observe(self.system, self.context, self.bias, self.record_forces)
                for key, value in zip(("step", "positions", "cv", "potential", "bias", "forces"),
                                      (self.step - eq, p, c, e, b, f)):
                    self.buffer[key].append(value)
        self.wall += time.perf_counter() - t0

    def cv(self) -> np.ndarray:
        """The walkers' CVs now, (n_walkers, n_cvs)."""
        import openmm.unit as u

        pos = self.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        return self.system.cv_values(pos if self.system.shares_context else pos[None])

    def set_bias(self, grid) -> None:
        """Apply ``grid`` (a BiasGrid on the bias's own domain and shape) from now on."""
        from cgflow.guidance.bias import FORCE_GROUP

        force = next(f for f in self.context.getSystem().getForces() if f.getForceGroup() == FORCE_GROUP)
        force.getTabulatedFunction(0).setFunctionParameters(*grid.table_parameters())
        force.updateParametersInContext(self.context)
        self.bias = grid

    def save_chunk(self) -> float:
        """Write the frames since the last chunk and a checkpoint as ``chunk-<step>.npz``; return its MD wall time."""
        n, n_cv = len(self.walkers), len(self.system.cv_names)
        n_particles = self.context.getSystem().getNumParticles()
        b = self.buffer
        positions = np.asarray(b["positions"], dtype=float).reshape(-1, n_particles, 3)
        if not (np.isfinite(positions).all() and np.isfinite(b["potential"]).all()):
            raise RuntimeError(f"walkers {self.walkers[0]}-{self.walkers[-1]}: positions or energies are not finite "
                               f"by step {self.step}: the MD blew up (a timestep too long for this system, or walkers "
                               "started where the force is not finite); nothing of it was saved")
        cv = b["cv"] if self.system.shares_context else self.system.cv_values(positions)
        write_npz(self.folder / f"chunk-{self.step:010d}.npz", end_step=self.step,
                  step=np.asarray(b["step"], dtype=np.int64),
                  positions=positions,
                  cv=np.asarray(cv, dtype=float).reshape(-1, n, n_cv),
                  potential=np.asarray(b["potential"], dtype=float).reshape(-1, n),
                  bias=np.asarray(b["bias"], dtype=float).reshape(-1, n),
                  wall_s=self.wall,
                  **({"forces": np.asarray(b["forces"], dtype=float).reshape(-1, n_particles, 3)}
                     if self.record_forces else {}),
                  checkpoint=np.frombuffer(self.context.createCheckpoint(), dtype=np.uint8))
        wall = self.wall
        self._reset()
        return wall

    def frames(self) -> "ReplicaFrames":
        """All frames saved in this replica's chunks (releases the Context)."""
        del self.context, self.integrator
        return _load_frames(self.folder, self.walkers)


def _chunk_end(path: Path) -> int:
    return int(path.stem.split("-")[1])


def check_consecutive(folder: Path, found: list[int], expected: list[int]) -> None:
    """Refuse to resume from chunks (ending at steps ``found``) that are not the first of the
    ``expected`` ones: frames between them would be missing from the result without a word."""
    if found != list(expected[:len(found)]):
        raise RuntimeError(f"{folder}: its chunks end at steps {found}, not at the first {len(found)} of "
                           f"{list(expected)}; the work folder was damaged: delete it to run this job afresh")


def chunk_ends(settings: MDSettings) -> list[int]:
    """The steps at which a replica saves a chunk: every ``checkpoint_interval`` and the end."""
    total, ci = settings.equilibration + settings.steps, settings.checkpoint_interval
    return sorted(set(range(ci, total, ci)) | {total})


class Progress:
    """Log lines of progress (steps done, rate, time left), at most one per ``every`` seconds.

    Each replica reports where it starts (:meth:`start`: its checkpoint's step when resumed), so
    the rate and the time left count only the steps this process runs."""

    def __init__(self, total_walker_steps: int, every: float = PROGRESS_EVERY_S):
        self.total, self.every = total_walker_steps, every
        self.done: dict[int, int] = {}
        self.resumed: dict[int, int] = {}
        self.t0 = time.perf_counter()
        self.last = -np.inf

    def start(self, walkers, step) -> None:
        self.done[walkers[0]] = self.resumed[walkers[0]] = len(walkers) * step

    def __call__(self, walkers, step, total, wall):
        self.done[walkers[0]] = len(walkers) * step
        now = time.perf_counter()
        finished = sum(self.done.values())
        if now - self.last < self.every and finished < self.total:
            return
        self.last = now
        rate = (finished - sum(self.resumed.values())) / max(now - self.t0, 1e-9)
        eta = (self.total - finished) / rate if rate > 0 else float("inf")
        log.info("%5.1f%%  %d/%d walker-steps  %.3g walker-steps/s  ETA %.0f s",
                 100 * finished / self.total, finished, self.total, rate, eta)


def run_replica(system, walkers: list[int], settings: MDSettings, platform: str, properties: dict,
                seed: int, folder: Path, progress: Progress | None = None, bias=None, start: np.ndarray | None = None,
                record_forces: bool = False) -> ReplicaFrames:
    """Run (or resume) one replica in ``folder`` under ``bias`` from ``start`` (nm); return its frames.

    ``record_forces`` also stores each frame's unbiased FG forces (for force matching of bead CG models).
    """
    replica = Replica(system, walkers, settings, platform, properties, seed, folder, bias, start, record_forces)
    if progress is not None:
        progress.start(walkers, replica.step)
    for end in chunk_ends(settings):
        if end <= replica.step:
            continue
        replica.advance(end)
        wall = replica.save_chunk()
        if progress is not None:
            progress(walkers, end, replica.total, wall)
    return replica.frames()


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


def open_workdir(workdir: Path, job: dict, choose_platform, threads: int) -> tuple[str, int]:
    """Reuse ``workdir`` if it holds the same ``job`` (config, round, walker layout) and return
    the platform and CPU thread count its checkpoints were made with (OpenMM's CPU Langevin
    random stream depends on the thread count); otherwise start it afresh with
    ``choose_platform()`` and ``threads``.
    """
    path = workdir / "manifest.json"
    if workdir.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("job") == job:
            return manifest["platform"], int(manifest.get("threads", threads))
        log.info("discarding %s: it belongs to another config or walker layout", workdir)
        remove_tree(workdir)
    platform = choose_platform()
    workdir.mkdir(parents=True)
    write_json(path, {"job": job, "platform": platform, "threads": threads})
    return platform, threads


def open_run(workdir: Path, job: dict, sampling, trial_context) -> tuple[str, dict]:
    """Set this process up for a checkpointed run of ``job`` in ``workdir`` (:func:`open_workdir`):
    pinned to a free core when ``sampling.pin_cpu`` and a CPU platform may run; the platform its
    checkpoints were made on, else ``sampling.platform`` (``auto`` times ``trial_context(name)``,
    which returns a (context, integrator)); and that platform's Context properties (this rank's
    GPU; the CPU threads its checkpoints were made with, else one when pinned)."""
    from cgflow.sampling.platform import (GPU_PLATFORMS, choose_platform, cpu_threads, gpu_device,
                                          pin_to_free_core, platform_properties)

    pinned = sampling.pin_cpu and sampling.platform in ("auto", "CPU", "Reference")
    if pinned:
        pin_to_free_core()
    job = {**job, "checkpoint_interval": sampling.checkpoint_interval}  # where the chunks end
    platform, threads = open_workdir(workdir, job, lambda: choose_platform(sampling.platform, trial_context),
                                     cpu_threads(pinned))
    # counting GPUs may import torch (~1 s): only a GPU platform needs the device index
    device = gpu_device() if platform in GPU_PLATFORMS else None
    return platform, platform_properties(platform, device_index=device, threads=threads)
