"""Alanine dipeptide for cycle CG: the internal-coordinate map puts phi/psi exactly where asked
and keeps X-H bonds at their constraint lengths, and the OpenMM energy is differentiable with
OpenMM's own forces as its gradient."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def alanine():
    from cgflow.reconstruction.alanine import Backbone
    from cgflow.systems.alanine import AlanineDipeptide

    ala = AlanineDipeptide()
    system = ala.create_system()
    return ala, system, Backbone(system, ala.initial_positions())


def test_zero_code_rebuilds_the_reference_structure(alanine):
    from cgflow.reconstruction.alanine import PHI_ROW, PSI_ROW, internal_coordinates

    ala, _, backbone = alanine
    x0 = ala.initial_positions()
    _, _, torsions = internal_coordinates(x0)
    xyz, _ = backbone.to_cartesian(torch.zeros(1, backbone.features, dtype=torch.float64),
                                   torch.tensor([torsions[0, PHI_ROW]]), torch.tensor([torsions[0, PSI_ROW]]))
    xyz = xyz.numpy()
    # same geometry up to a rigid motion: all pair distances agree (X-H at constraint lengths)
    d0 = np.linalg.norm(x0[:, None] - x0[None], axis=-1)
    d1 = np.linalg.norm(xyz[0][:, None] - xyz[0][None], axis=-1)
    assert np.abs(d1 - d0).max() < 5e-4
    np.testing.assert_allclose(ala.cv_values(xyz)[0], ala.cv_values(x0)[0], atol=1e-10)


def test_any_code_lands_on_the_requested_phi_psi_with_constrained_x_h_bonds(alanine):
    ala, system, backbone = alanine
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(64, backbone.features, generator=gen, dtype=torch.float64)
    phi, psi = ((torch.rand(64, generator=gen, dtype=torch.float64) * 2 - 1) * np.pi for _ in range(2))
    xyz, log_det = backbone.to_cartesian(u, phi, psi)
    np.testing.assert_allclose(ala.cv_values(xyz.numpy()), torch.stack([phi, psi], -1).numpy(), atol=1e-9)
    assert torch.isfinite(log_det).all()
    for k in range(system.getNumConstraints()):
        i, j, length = system.getConstraintParameters(k)
        r = np.linalg.norm(xyz[:, i].numpy() - xyz[:, j].numpy(), axis=-1)
        np.testing.assert_allclose(r, length._value, rtol=1e-9)


def test_openmm_energy_gradient_is_minus_the_force(alanine):
    from cgflow.reconstruction.alanine import OpenMMEnergy

    ala, system, _ = alanine
    energy = OpenMMEnergy(system, "Reference")
    rng = np.random.default_rng(1)
    x = ala.initial_positions()[None] + rng.normal(0, 0.002, (2, 22, 3))
    xt = torch.tensor(x, requires_grad=True)
    energy.torch_energy(xt).sum().backward()
    eps = 1e-5
    for atom, axis in ((3, 0), (8, 2), (16, 1)):
        plus, minus = x.copy(), x.copy()
        plus[:, atom, axis] += eps
        minus[:, atom, axis] -= eps
        fd = (energy(plus)[0] - energy(minus)[0]) / (2 * eps)
        np.testing.assert_allclose(xt.grad[:, atom, axis].numpy(), fd, rtol=1e-4, atol=1e-3)
    assert energy.evaluations == 2 + 12
