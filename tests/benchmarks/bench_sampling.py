#!/usr/bin/env python
"""Sampling throughput of cgflow's OpenMM set-ups, measured side by side in one process.

* Toy walkers (Müller-Brown) as particles of one Context: walker-steps/s for 1 to 16384
  walkers on Reference, CPU (Threads=1) and a usable GPU platform (CUDA, OpenCL), and the
  16384/1 ratio that justifies sharing a Context.
* Alanine dipeptide (vacuum, OBC2): steps/s and ns/day at 2 fs on CPU (Threads=1) pinned to one
  core vs unpinned, on Reference, and on the GPU platform when there is one.
* What saving frames costs: a sampling replica of alanine in vacuum on Reference (the platform
  ``auto`` takes for it here) saving a frame every 10 or 100 steps, with and without FG forces,
  as a fraction of the bare integrator's steps/s.

Each number is the median of 3 timings of >= ~1 s (adaptive step count), each on a fresh Context
after a warm-up (where the scheduler puts an unpinned worker thread varies per Context); every
timing ends with ``getState(getEnergy=True)`` so asynchronous platforms are measured honestly.
Run ``python tests/benchmarks/bench_sampling.py [--quick] [--json PATH]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

TOY_WALKERS = (1, 64, 1024, 16384)
TIMESTEP = 0.002  # ps
TEMPERATURE = 300.0  # K


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _timed(context, integrator, n: int) -> float:
    t0 = time.perf_counter()
    integrator.step(n)
    context.getState(getEnergy=True)  # waits for the platform to finish
    return time.perf_counter() - t0


def step_count(context, integrator, target_s: float) -> int:
    """The number of steps that takes about ``target_s`` on this Context."""
    n, elapsed = 10, _timed(context, integrator, 10)
    while elapsed < 0.1 * target_s:
        n *= 4
        elapsed = _timed(context, integrator, n)
    return max(n, round(n * target_s / elapsed))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings (smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    import openmm
    import openmm.unit as u

    from cgflow.io import write_json
    from cgflow.sampling.engine import MDSettings, make_context
    from cgflow.sampling.platform import GPU_PLATFORMS, available_platforms, pin_to_free_core, platform_properties
    from cgflow.systems.alanine import AlanineDipeptide
    from cgflow.systems.toy import BUILTINS, CV, ToySystem

    target_s, warmup = (0.1, 50) if args.quick else (1.0, 200)
    settings = MDSettings(TEMPERATURE, TIMESTEP, 1.0, steps=0, equilibration=0,
                          report_interval=1, checkpoint_interval=1)
    full_mask = os.sched_getaffinity(0)
    core = pin_to_free_core()
    pinned = {core}

    def measure(system, n_walkers: int, platform: str, mask: set[int], repeats: int = 3) -> list[float]:
        """Steps/s on ``repeats`` fresh Contexts (thread placement varies between them)."""
        os.sched_setaffinity(0, mask)  # before the Context: its worker threads inherit the mask
        rates, n = [], None
        for _ in range(repeats):
            context, integrator = make_context(system, n_walkers, settings, platform,
                                               platform_properties(platform), seed=1)
            context.setVelocitiesToTemperature(TEMPERATURE * u.kelvin, 1)
            _timed(context, integrator, warmup)
            n = n or step_count(context, integrator, target_s)
            rates.append(n / _timed(context, integrator, n))
            del context, integrator
        os.sched_setaffinity(0, pinned)
        return rates

    machine = {
        "nproc": os.cpu_count(), "affinity": sorted(full_mask), "pinned_core": core,
        "cpu": cpu_model(), "openmm": openmm.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "quick": args.quick,
    }
    print(f"cgflow sampling benchmark  {machine['date']}{'  (--quick)' if args.quick else ''}")
    print(f"machine: {machine['nproc']} CPUs ({machine['cpu']}), affinity {machine['affinity']}, "
          f"pinned to core {core}; OpenMM {machine['openmm']}")
    print(f"median of 3 timings of ~{target_s:g} s, each on a fresh Context after {warmup} warm-up steps\n")

    mb = BUILTINS["muller_brown"]
    toy_system = ToySystem(mb.energy, tuple(CV(c, c) for c in mb.cv), mb.box)

    def usable(platform: str) -> bool:
        try:
            make_context(toy_system, 1, settings, platform, {})
            return True
        except Exception as exc:  # built in, but no device
            print(f"{platform}: present but unusable ({exc})")
            return False

    gpus = [p for p in GPU_PLATFORMS if p in available_platforms() and usable(p)][:1]
    machine["gpu_platform"] = gpus[0] if gpus else None
    if gpus:
        print(f"GPU platform: {gpus[0]} (default device)\n")
    toy = {}
    print("Toy walkers in one Context (Müller-Brown), walker-steps/s, pinned")
    print(f"{'platform':<10}" + "".join(f"{f'{n} walkers':>14}" for n in TOY_WALKERS) + f"{'16384/1':>9}")
    for platform in ("Reference", "CPU", *gpus):
        rates = {n: n * statistics.median(measure(toy_system, n, platform, pinned)) for n in TOY_WALKERS}
        ratio = rates[TOY_WALKERS[-1]] / rates[1]
        toy[platform] = {"walker_steps_per_s": {str(n): r for n, r in rates.items()}, "ratio_16384_1": ratio}
        print(f"{platform:<10}" + "".join(f"{r:14.4g}" for r in rates.values()) + f"{ratio:9.1f}")

    ns_day = TIMESTEP * 86400 / 1000  # ns/day per step/s
    cases = {"CPU pinned": ("CPU", pinned), "CPU unpinned": ("CPU", full_mask), "Reference": ("Reference", pinned),
             **{p: (p, pinned) for p in gpus}}
    alanine, spread = {}, {}
    print(f"\nAlanine dipeptide, steps/s (ns/day at {TIMESTEP * 1000:g} fs), CPU Threads=1")
    print(f"{'solvent':<8}" + "".join(f"{c:>20}" for c in cases) + f"{'pinned/unpinned':>17}")
    for solvent in ("vacuum", "obc2"):
        system = AlanineDipeptide(solvent)
        runs = {case: measure(system, 1, p, mask) for case, (p, mask) in cases.items()}
        rates = {case: statistics.median(r) for case, r in runs.items()}
        ratio = rates["CPU pinned"] / rates["CPU unpinned"]
        alanine[solvent] = {"steps_per_s": rates, "ns_per_day": {c: r * ns_day for c, r in rates.items()},
                            "pinned_over_unpinned": ratio, "runs_steps_per_s": runs}
        cells = "".join(f"{f'{r:.0f} ({r * ns_day:.0f})':>20}" for r in rates.values())
        print(f"{solvent:<8}{cells}{ratio:17.2f}")
        spread[solvent] = "-".join(f"{r:.0f}" for r in (min(runs["CPU unpinned"]), max(runs["CPU unpinned"])))
    print("CPU unpinned runs span " + ", ".join(f"{k} {v} steps/s" for k, v in spread.items())
          + " (where the scheduler puts the worker thread decides it)")

    frames = frame_cost(AlanineDipeptide("vacuum"), target_s, warmup)

    if args.json:
        write_json(args.json, {"machine": machine, "target_s": target_s, "warmup_steps": warmup,
                               "toy_muller_brown": toy, "alanine_dipeptide": alanine, "frame_cost": frames})
        print(f"\nwrote {args.json}")


def frame_cost(system, target_s: float, warmup: int, repeats: int = 3) -> dict:
    """Steps/s of a sampling replica saving frames (every 10 or 100 steps, with or without forces)
    over those of the bare integrator, each the median of ``repeats`` fresh Contexts on Reference."""
    import tempfile
    from pathlib import Path

    from cgflow.sampling.engine import MDSettings, Replica

    def rate(report_interval: int | None, forces: bool) -> float:
        rates = []
        for _ in range(repeats):
            settings = MDSettings(TEMPERATURE, TIMESTEP, 1.0, steps=10**9, equilibration=0,
                                  report_interval=report_interval or 10**9, checkpoint_interval=10**9)
            with tempfile.TemporaryDirectory() as folder:
                replica = Replica(system, [0], settings, "Reference", {}, 1, Path(folder), record_forces=forces)
                replica.advance(warmup)
                n = step_count(replica.context, replica.integrator, target_s)
                start = replica.step
                t0 = time.perf_counter()
                replica.advance(start + n)
                rates.append(n / (time.perf_counter() - t0))
        return statistics.median(rates)

    bare = rate(None, False)
    out = {"bare_steps_per_s": bare}
    print("\nSaving frames, alanine dipeptide in vacuum on Reference: steps/s (fraction of the bare integrator's "
          f"{bare:.0f})")
    for every in (10, 100):
        for forces in (False, True):
            key = f"every {every}{' with forces' if forces else ''}"
            out[key] = rate(every, forces) / bare
            print(f"  frame {key:<24}{out[key] * bare:10.0f}{out[key]:8.2f}")
    return out


if __name__ == "__main__":
    main()
