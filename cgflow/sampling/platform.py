"""Where an OpenMM Context runs: platform choice and CPU pinning.

On small VMs OpenMM's CPU platform is an order of magnitude faster when its process is pinned
to one core with one thread (waking a thread on another core costs ~0.1 ms), and the
Reference platform can beat it, and even a GPU, for tiny systems (alanine dipeptide in vacuum
on an H200 node: Reference 70k steps/s, CUDA 22k). So ``auto`` times every usable platform on
the real system and takes the fastest, and every sampling process pins itself to one free core
of the affinity mask it was given (a scheduler's mask is respected).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

GPU_PLATFORMS = ("CUDA", "OpenCL")
"""OpenMM platforms that run on a GPU device (``DeviceIndex``), tried before the CPU ones."""

_held_lock = None  # the core lock stays open (held) for the life of the process


def pin_to_free_core() -> int | None:
    """Pin this process to one core of its affinity mask that no other cgflow process holds."""
    global _held_lock
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    lock_dir = Path(tempfile.gettempdir()) / f"cgflow-cores-{os.getuid()}"
    lock_dir.mkdir(exist_ok=True)
    for core in allowed:
        fh = open(lock_dir / f"core-{core}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _held_lock = fh
        os.sched_setaffinity(0, {core})
        log.info("pinned to core %d of %s", core, allowed)
        return core
    core = allowed[os.getpid() % len(allowed)]
    os.sched_setaffinity(0, {core})
    log.info("all cores of %s are held by other cgflow processes; sharing core %d", allowed, core)
    return core


LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID")
"""Where launchers put a process's rank among those on its node (Open MPI, MPICH/Hydra, srun).
srun's comes last: ranks that mpiexec starts inside a SLURM job inherit the job step's."""


def local_rank(environ=os.environ) -> int:
    """This process's rank on its node (0 without a launcher)."""
    for name in LOCAL_RANK_VARIABLES:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    return 0


def visible_gpus(environ=os.environ) -> int:
    """GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES (as SLURM sets it for
    --gpus), else what torch sees, else 1 (let the platform pick its default device)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip()]) or 1
    try:
        import torch

        return max(torch.cuda.device_count(), 1)
    except ImportError:
        return 1


def gpu_device(environ=os.environ) -> int:
    """The GPU (index among the visible ones) this rank uses: local rank modulo visible GPUs,
    so ranks on a node spread over its GPUs and share them evenly when there are more ranks."""
    return local_rank(environ) % visible_gpus(environ)


def cpu_threads(pinned: bool) -> int:
    """OpenMM CPU threads: one when pinned, else every core of this process's affinity mask
    (what the scheduler gave it: cpus_per_task under SLURM)."""
    if pinned or not hasattr(os, "sched_getaffinity"):
        return 1
    return len(os.sched_getaffinity(0))


def available_platforms() -> list[str]:
    import openmm

    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def platform_properties(name: str, device_index: int | None = None, threads: int = 1) -> dict:
    """Properties for ``openmm.Context``: one CPU thread, or the GPU this rank owns."""
    if name == "CPU":
        return {"Threads": str(threads)}
    if name in GPU_PLATFORMS and device_index is not None:
        return {"DeviceIndex": str(device_index)}
    return {}


def choose_platform(requested: str, make_context, trial_steps: int = 200) -> str:
    """Resolve ``auto`` to the platform with the most steps/s on this system (GPU platforms that
    are built in but have no device are skipped); ``make_context(name)`` returns (context, integrator)."""
    names = available_platforms()
    if requested != "auto":
        if requested not in names:
            raise RuntimeError(f"OpenMM platform {requested!r} is not available here; available: {', '.join(names)}")
        return requested
    timings = {}
    for name in (*GPU_PLATFORMS, "CPU", "Reference"):
        if name not in names:
            continue
        try:
            context, integrator = make_context(name)
            integrator.step(10)
        except Exception as exc:
            if name not in GPU_PLATFORMS:
                raise
            log.info("platform %s is built in but has no usable device: %s", name, exc)
            continue
        t0 = time.perf_counter()
        integrator.step(trial_steps)
        context.getState(getEnergy=True)  # waits for a GPU to finish
        timings[name] = trial_steps / (time.perf_counter() - t0)
        del context, integrator
    best = max(timings, key=timings.get)
    log.info("platform auto -> %s (steps/s: %s)", best, ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return best
