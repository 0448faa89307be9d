"""MPI if there is any: the same ``cgflow sample`` runs under mpiexec/srun or as plain python."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger(__name__)


_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")


def world():
    """(comm, rank, size); comm is None when no MPI launcher started this process."""
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        return None, 0, 1
    try:
        from mpi4py import MPI
    except ImportError:
        return None, 0, 1
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None, 0, 1
    return comm, comm.Get_rank(), comm.Get_size()


@contextlib.contextmanager
def aborting_all_on_error(comm):
    """Let an error in one rank end every rank (``MPI_Abort``): mpi4py only ends the failing
    one, and the others would wait in the next collective until the job's wall time."""
    try:
        yield
    except Exception:
        if comm is None:
            raise
        log.exception("rank %d of %d failed; aborting every rank", comm.Get_rank(), comm.Get_size())
        sys.stderr.flush()
        comm.Abort(1)
