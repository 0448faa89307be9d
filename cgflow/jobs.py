"""The environment the workflow's jobs run in.

The Snakefile imports cgflow to validate the config, so the Python running Snakemake has it;
its jobs are shell commands (``cgflow sample ...``, ``mpiexec -n 2 cgflow sample ...``) that
must find the same installation. They would not when Snakemake is started as
``.venv/bin/snakemake`` without activating the venv, the natural thing after ``make install``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


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
