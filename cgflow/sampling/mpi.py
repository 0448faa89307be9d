"""MPI if there is any: the same ``cgflow sample`` runs under mpiexec/srun or as plain python."""

from __future__ import annotations

import os


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
