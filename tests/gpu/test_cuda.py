"""The CUDA path: OpenMM's CUDA platform applies the same tabulated bias and physics as the
Reference platform, ``platform: auto`` picks it, MPI ranks map to GPUs by local rank, and the
CG bead forces run on a torch CUDA device. Skipped where no GPU is usable (``pytest -m gpu``
runs them on a GPU machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import yaml

from cgflow.sampling.engine import make_context
from tests.conftest import BIN
from tests.unit.test_bias import SETTINGS, _group_energy, _random_grid, check_alanine_periodic_bias

pytestmark = pytest.mark.gpu


@lru_cache(maxsize=1)
def openmm_cuda_error() -> str | None:
    """Why OpenMM's CUDA platform cannot run here (None when it can)."""
    import openmm

    try:
        openmm.Platform.getPlatformByName("CUDA")
    except Exception:
        failures = "; ".join(f for f in openmm.Platform.getPluginLoadFailures() if "CUDA" in f)
        return f"OpenMM has no CUDA platform ({failures[:300] or 'pip install openmm[cuda12] or openmm[cuda13]'})"
    system = openmm.System()
    system.addParticle(1.0)
    try:
        openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CUDA"))
    except Exception as exc:
        return f"OpenMM's CUDA platform has no usable device: {exc}"
    return None


@pytest.fixture
def openmm_cuda():
    reason = openmm_cuda_error()
    if reason:
        pytest.skip(reason)


def test_cuda_bias_energy_matches_grid_interpolation(openmm_cuda):
    from cgflow.systems.toy import CV, ToySystem

    toy = ToySystem("x^2 + y^2", (CV("s", "0.8*x - 0.6*y"), CV("y", "y")), {"x": (-2, 2), "y": (-2, 2)})
    ranges = toy.cv_range()
    grid = _random_grid(toy.cv_names, [r[0] for r in ranges], [r[1] for r in ranges], [False, False], 17)
    pos = np.random.default_rng(1).uniform(-2.6, 2.6, size=(64, 3))
    context, _ = make_context(toy, len(pos), SETTINGS, "CUDA", {}, bias=grid, positions=pos)
    # single precision on the GPU: ~1e-6 relative per walker
    assert _group_energy(context) == pytest.approx(grid(toy.cv_values(pos)).sum(), rel=1e-5, abs=1e-3)
    check_alanine_periodic_bias("CUDA", 1e-3)


def test_cuda_alanine_energy_and_forces_match_reference(openmm_cuda):
    import openmm.unit as u

    from cgflow.systems.alanine import AlanineDipeptide

    for solvent in ("vacuum", "obc2"):
        ala = AlanineDipeptide(solvent)
        x = ala.initial_positions() + np.random.default_rng(3).normal(scale=0.01, size=(22, 3))
        out = {}
        for platform in ("Reference", "CUDA"):
            context, _ = make_context(ala, 1, SETTINGS, platform, {}, positions=x)
            state = context.getState(getEnergy=True, getForces=True)
            out[platform] = (state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                             state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
        assert out["CUDA"][0] == pytest.approx(out["Reference"][0], abs=1e-2)
        scale = np.linalg.norm(out["Reference"][1])
        assert np.linalg.norm(out["CUDA"][1] - out["Reference"][1]) / scale < 1e-4


def test_auto_takes_cuda_for_many_walkers_and_samples_the_exact_free_energy(campaign, openmm_cuda, tmp_path):
    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import compare_to_reference, histogram_fes
    from cgflow.io import read_provenance
    from cgflow.sampling.round import run

    c = campaign(sampling={"walkers": 1024, "steps": 80000, "report_interval": 100, "platform": "auto"},
                 analysis={"bins": 30, "bootstrap": 50})
    path = run(c, 0, tmp_path / "r")
    assert read_provenance(path)["platform"] == "CUDA"
    df = pd.read_parquet(path)
    edges, kT = cv_edges(c), c.sampling.kT
    exact = c.system.build().reference_fes(edges, c.sampling.temperature)
    fes = histogram_fes(df[["x"]].to_numpy(), edges, kT, blocks=df.walker.to_numpy(), n_bootstrap=50, seed=1)
    assert compare_to_reference(fes, exact, kT, 3.0)["rmse_kT"] < 0.2


@pytest.mark.skipif(shutil.which("mpiexec", path=str(BIN)) is None, reason="no mpiexec beside this Python")
def test_mpi_ranks_take_the_gpu_of_their_local_rank(openmm_cuda, tmp_path):
    from cgflow.config import load_config
    from cgflow.io import read_provenance

    config = tmp_path / "config.yaml"
    cfg = {"campaign": "gpu-mpi", "seed": 4, "system": {"type": "toy", "potential": "double_well"},
           "sampling": {"walkers": 16, "steps": 4000, "report_interval": 100, "platform": "CUDA"}}
    config.write_text(yaml.safe_dump(load_config(cfg).resolved))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": "0"}
    done = subprocess.run([str(BIN / "mpiexec"), "-n", "2", str(BIN / "cgflow"), "sample", "--config",
                           str(config), "--round", "0", "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    path = tmp_path / "out" / "samples.parquet"
    assert read_provenance(path)["ranks"] == 2 and read_provenance(path)["platform"] == "CUDA"
    for rank in (0, 1):  # one visible GPU: both ranks on device 0
        assert f"rank {rank} of 2: walkers" in done.stderr and "CUDA {'DeviceIndex': '0'}" in done.stderr
    assert sorted(pd.read_parquet(path).walker.unique()) == list(range(16))


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="torch sees no CUDA device")
def test_cg_bead_forces_on_cuda_equal_eager_double_on_cpu():
    import torch

    from cgflow.sampling.cg_forces import BeadForces, eager_forces
    from tests.unit.test_cg_forces import alanine_bead_model, relative_error

    model, x = alanine_bead_model()
    _, f64 = eager_forces(model, x[:256])
    for compiled in (False, True):
        forces = BeadForces(model, "float32", compile=compiled, device="cuda")
        e32, f32 = forces(x[:256])
        assert f32.device.type == "cuda" and (forces.compiled is not None) == compiled
        assert relative_error(f32.cpu(), f64) < 1e-5
    assert torch.cuda.max_memory_allocated() > 0
