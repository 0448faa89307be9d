#!/usr/bin/env python
"""MPI walkers and the SLURM path, measured side by side in one run (``make bench-mpi``).

* Walker throughput (walker-steps per second of ``cgflow sample`` wall time, from the round's
  provenance ``wall_s``: sampling plus the gather on rank 0, without interpreter start-up) with
  1 and 2 MPI ranks (``mpiexec -n``), for alanine dipeptide (one OpenMM Context per walker) and
  toy walkers (one Context of particles per rank), and the 2/1 ratio (target >= 1.8 on 2 cores);
  beside it the same from the MD time alone (``md_wall_s`` per rank), without the per-rank set-up
  (force field, System, Context) that more ranks do not shorten.
* Per-job overhead of the SLURM path: the same 2-round toy campaign run locally and with
  ``--profile profiles/slurm --workflow-profile tests/hpc/site`` (needs a cluster: ``make
  slurm-up``), (wall_slurm - wall_local) / jobs.

    python tests/benchmarks/bench_mpi.py [--skip-slurm] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

SYSTEMS = {
    "alanine (vacuum), 4 walkers x 40k steps": {
        "system": {"type": "alanine_dipeptide", "solvent": "vacuum"},
        "sampling": {"walkers": 4, "steps": 40000, "report_interval": 500, "platform": "CPU"},
    },
    "toy (Mueller-Brown), 4096 walkers x 10k steps": {
        "system": {"type": "toy", "potential": "muller_brown"},
        "sampling": {"walkers": 4096, "steps": 10000, "report_interval": 1000, "platform": "CPU"},
    },
}


def throughput(where: Path, name: str, spec: dict, ranks: int) -> tuple[float, float]:
    """(walker-steps/s of the whole ``cgflow sample``, walker-steps/s of its MD alone)."""
    from cgflow.config import load_config
    from cgflow.io import read_provenance

    config = where / f"{name}.yaml"
    config.write_text(yaml.safe_dump(load_config({"campaign": name, "seed": 1, **spec}).resolved))
    out = where / f"{name}-{ranks}"
    cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "cgflow"), "sample", "--config", str(config),
           "--round", "0", "--out-dir", str(out)]
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    prov = read_provenance(out / "samples.parquet")
    assert prov["ranks"] == ranks
    walker_steps = spec["sampling"]["walkers"] * spec["sampling"]["steps"]
    return walker_steps / prov["wall_s"], walker_steps / (prov["md_wall_s"] / ranks)


def campaign_wall(where: Path, *extra: str) -> tuple[float, str]:
    where.mkdir(parents=True)
    config = where / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "campaign": "bench-mpi", "seed": 5,
        "system": {"type": "toy", "potential": "double_well"},
        "sampling": {"walkers": 16, "steps": 8000, "report_interval": 100, "platform": "Reference"},
        "guidance": {"rounds": 1, "train_steps": 200},
        "analysis": {"bins": 30, "bootstrap": 20},
    }))
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--configfile", str(config),
                           "-d", str(where), *extra], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return time.perf_counter() - t0, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-slurm", action="store_true", help="only the MPI throughput")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result: dict = {"cores": os.cpu_count(), "throughput_walker_steps_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        print(f"{'system':48s} {'1 rank':>12s} {'2 ranks':>12s} {'2/1':>6s} {'2/1 MD only':>12s}")
        for i, (label, spec) in enumerate(SYSTEMS.items()):
            (one, md_one), (two, md_two) = (throughput(where, f"s{i}", spec, n) for n in (1, 2))
            result["throughput_walker_steps_per_s"][label] = {"1": one, "2": two, "ratio": two / one,
                                                              "md_ratio": md_two / md_one}
            print(f"{label:48s} {one:12.0f} {two:12.0f} {two / one:6.2f} {md_two / md_one:12.2f}")

        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() \
            if shutil.which("sinfo") else ""
        if args.skip_slurm or state not in ("idle", "mixed"):
            print("SLURM overhead: skipped (no idle cluster; `make slurm-up` starts one)")
        else:
            local, _ = campaign_wall(where / "local", "--cores", "2")
            slurm, log = campaign_wall(where / "slurm", "--profile", str(ROOT / "profiles" / "slurm"),
                                       "--workflow-profile", str(ROOT / "tests" / "hpc" / "site"))
            jobs = len(re.findall(r"submitted with SLURM jobid", log))
            result["slurm"] = {"local_s": local, "slurm_s": slurm, "jobs": jobs,
                               "overhead_per_job_s": (slurm - local) / jobs, "ratio": slurm / local}
            print(f"2-round toy campaign: local {local:.0f} s, SLURM {slurm:.0f} s ({slurm / local:.1f}x), "
                  f"{jobs} sbatch jobs, {(slurm - local) / jobs:.1f} s overhead per job")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
