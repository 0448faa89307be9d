"""CG MD forces in single precision and compiled: the same forces and statistics as eager double precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.sampling.cg_forces import BeadForces, eager_forces
from cgflow.sampling.cg_md import KB, langevin_md
from cgflow.systems.alanine import AlanineDipeptide
from cgflow.systems.cg_map import alanine_map
from cgflow.training.bead_campaign import build_model


def alanine_bead_model(seed=0, network=True):
    rng = np.random.default_rng(seed)
    x = alanine_map().map_positions(AlanineDipeptide().initial_positions()[None]) + 0.01 * rng.normal(size=(300, 10, 3))
    torch.manual_seed(seed)
    model = build_model(x, KB * 300, hidden=(32, 32), n_rbf=8)
    if network:
        torch.nn.init.normal_(model.net.mlp[-1].weight, std=0.5)  # a network that matters (it starts at zero)
    return model, torch.as_tensor(x)


def relative_error(f, ref):
    return float(torch.linalg.norm(f.double() - ref) / torch.linalg.norm(ref))


@pytest.mark.slow
def test_compiled_single_precision_forces_equal_eager_double_and_follow_training_updates():
    model, x = alanine_bead_model()
    forces = BeadForces(model, "float32", compile=True)
    e64, f64 = eager_forces(model, x[:64])
    e32, f32 = forces(x[:64])
    assert f32.dtype == torch.float32 and forces.compiled is not None
    assert relative_error(f32, f64) < 1e-5
    np.testing.assert_allclose(e32.double().numpy(), e64.numpy(), rtol=1e-5, atol=1e-3)
    # a training update reaches MD after sync(), through the same compiled function
    with torch.no_grad():
        model.net.mlp[-1].weight.mul_(-2.0)
    forces.sync()
    _, f_new = eager_forces(model, x[:64])
    change = forces(x[:64])[1] - f32
    assert relative_error(change, f_new - f64) < 1e-3
    assert forces.compiled is not None


def test_single_precision_md_samples_the_same_bond_statistics_as_double():
    model, x = alanine_bead_model(1, network=False)
    i, j = model.prior.bonds[0].tolist()
    masses, T = np.full(10, 14.0), 300.0
    runs = {}
    for precision in ("float32", "float64"):
        tr = langevin_md(BeadForces(model, precision, compile=False), x[:64], masses, T, 0.002, 1500, report_interval=10,
                         generator=torch.Generator().manual_seed(3))
        assert tr.positions.dtype == {"float32": torch.float32, "float64": torch.float64}[precision]
        d = torch.linalg.norm(tr.positions[30:, :, j] - tr.positions[30:, :, i], dim=-1).double()
        runs[precision] = (float(d.mean()), float(d.var()))
    # a harmonic bond of the prior: its variance is kT/k either way (a few % sampling error)
    kb = float(model.prior.kb[0])
    for mean, var in runs.values():
        assert var == pytest.approx(KB * T / kb, rel=0.12)
    assert runs["float32"][0] == pytest.approx(runs["float64"][0], abs=2e-4)


def test_unknown_precision_is_refused():
    model, _ = alanine_bead_model()
    with pytest.raises(ValueError, match="float32, float64"):
        BeadForces(model, "float16")


def test_md_device_auto_is_the_cpu_without_cuda_and_cuda_is_refused_clearly(monkeypatch):
    from cgflow.sampling.cg_forces import md_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert md_device("auto") == torch.device("cpu") and md_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        md_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        md_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert md_device("auto") == torch.device("cuda")
