"""The environment the workflow's jobs run in.

The Snakefile imports cgflow to validate the config, so the Python running Snakemake has it;
its jobs are shell commands (``cgflow sample ...``, ``mpiexec -n 2 cgflow sample ...``) that
must find the same installation. They would not when Snakemake is started as
``.venv/bin/snakemake`` without activating the venv, the natural thing after ``make install``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)
_warned: set[tuple] = set()


def run_jobs_in_this_environment(source: str) -> None:
    """Put the folder of this interpreter's ``cgflow`` command first on the jobs' PATH (it holds
    the venv's ``mpiexec`` too). Nothing changes where that folder has no ``cgflow`` (a conda
    env per rule activates its own: ``envs/cgflow.post-deploy.sh`` installs cgflow into it from
    ``source``, the checkout, passed as CGFLOW_SOURCE). Snakemake's jobs inherit this process's
    environment; a cluster job runs the Snakefile again, which calls this again."""
    os.environ["CGFLOW_SOURCE"] = str(Path(source).resolve())
    folder = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if (Path(folder) / "cgflow").is_file() and path.split(os.pathsep)[0] != folder:
        os.environ["PATH"] = os.pathsep.join([folder, path]) if path else folder


def mpi_launch(rule: str, mpi: str | None, tasks) -> str:
    """The launcher prefix of a job's command: '<mpi> -n <tasks> ' when resources give both an
    MPI launcher (``mpi``: mpiexec, or "srun --mpi=pmi2" under SLURM) and ``tasks`` > 1; else ''
    (one process). Half of that pair is a slip that would run one rank on resources booked for
    many, so it is warned about, once per rule and setting."""
    try:
        n = int(tasks or 1)
    except (TypeError, ValueError):
        raise ValueError(f"{rule}: resources tasks={tasks!r} is not a whole number of MPI ranks") from None
    if mpi and n > 1:
        return f"{mpi} -n {n} "
    if (mpi or n > 1) and (rule, mpi, n) not in _warned:
        _warned.add((rule, mpi, n))
        if mpi:
            log.warning("%s: resources mpi=%r with tasks=%d: the job runs one process, without the launcher; "
                        "set tasks > 1 to run that many ranks", rule, mpi, n)
        else:
            log.warning("%s: resources tasks=%d without mpi: the job runs one process; set mpi (mpiexec, or "
                        "\"srun --mpi=pmi2\" under SLURM) to run %d ranks", rule, n, n)
    return ""
