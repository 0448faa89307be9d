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


def _fg_like_frames(ala, n=8, seed=3):
    """The C7eq structure with 0.01 nm noise: FG-like frames (no IC sits at a map boundary)."""
    rng = np.random.default_rng(seed)
    return ala.initial_positions()[None] + rng.normal(0, 0.01, (n, 22, 3))


def _pair_distances(xyz):
    return np.linalg.norm(xyz[:, :, None] - xyz[:, None], axis=-1)


@pytest.mark.parametrize("which", ["backbone", "hydrogens"])
def test_ic_map_round_trip(alanine, which):
    """positions -> (s, u) -> positions is the identity up to rigid motion (X-H set to constraint
    lengths), and u -> positions -> u is the identity."""
    from cgflow.reconstruction.alanine import HYDROGENS, ZMATRIX, backbone_map, hydrogen_map

    ala, system, _ = alanine
    zmap = (backbone_map if which == "backbone" else hydrogen_map)(system, ala.initial_positions())
    x0 = _fg_like_frames(ala)
    s, u = zmap.given_values(x0), zmap.codes(x0)
    xyz, log_j = zmap.to_cartesian(torch.as_tensor(u), torch.as_tensor(s))
    assert torch.isfinite(log_j).all()
    # distances between atoms not in an X-H bond (those bonds are reset to their constraint length)
    heavy = [i for i in range(22) if i not in HYDROGENS]
    d0, d1 = _pair_distances(x0[:, heavy]), _pair_distances(xyz.numpy()[:, heavy])
    np.testing.assert_allclose(d1, d0, atol=1e-9)
    np.testing.assert_allclose(zmap.given_values(xyz.numpy()), s, atol=1e-9)
    np.testing.assert_allclose(zmap.codes(xyz.numpy()), u, atol=1e-7)
    # every generated IC of the rebuilt structure is the original's (X-H bonds aside)
    assert zmap.features == {"backbone": 46, "hydrogens": 24}[which]
    assert all(ZMATRIX[row][0] in HYDROGENS for kind, row in zmap.generated) == (which == "hydrogens")


def test_hydrogen_map_log_jacobian_is_the_surface_volume_of_the_hydrogens(alanine):
    """With the heavy atoms fixed, the 12 hydrogens live on spheres around their bond partners; the
    volume element of u -> their 36 coordinates, sqrt det(J^T J) by autograd, must equal the map's
    ln|dIC/du| + ln J_IC less the heavy atoms' own terms (b^2 per heavy bond, sin per heavy angle)."""
    from cgflow.reconstruction.alanine import ANGLE, BOND, HYDROGENS, hydrogen_map

    ala, system, _ = alanine
    zmap = hydrogen_map(system, ala.initial_positions())
    x0 = _fg_like_frames(ala, n=1)
    s = torch.as_tensor(zmap.given_values(x0))
    h = sorted(HYDROGENS)
    heavy_terms = sum(2 * torch.log(s[0, k]) if kind == BOND else torch.log(torch.sin(s[0, k]))
                      for k, (kind, _) in enumerate(zmap.given) if kind in (BOND, ANGLE))
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        u = torch.randn(1, zmap.features, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: zmap.to_cartesian(v[None], s)[0][0, h].reshape(-1), u[0])
        volume = 0.5 * torch.logdet(jac.T @ jac)
        _, log_j = zmap.to_cartesian(u, s)
        torch.testing.assert_close(volume, log_j[0] - heavy_terms, rtol=0, atol=1e-8)


def test_backbone_log_jacobian_by_finite_differences(alanine):
    """The backbone map's ln|dIC/du| (diagonal) against central differences of the generated ICs."""
    ala, _, backbone = alanine
    u = torch.randn(2, backbone.features, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, log_det = backbone.generated_ics(u)
    eps = 1e-6
    fd = torch.stack([(backbone.generated_ics(u + eps * e)[0] - backbone.generated_ics(u - eps * e)[0])[:, k] / (2 * eps)
                      for k, e in enumerate(torch.eye(backbone.features, dtype=torch.float64))], -1)
    torch.testing.assert_close(log_det, torch.log(fd.abs()).sum(-1), rtol=0, atol=1e-6)


def test_hydrogens_from_heavy_atom_beads(alanine):
    """q(H | heavy atoms) trained by reverse KL on FG frames' heavy atoms: backmapped structures keep
    the given beads exactly (after the rigid fit), X-H bonds at constraint length, and training
    lowers the reverse KL and the energy of the backmapped structures."""
    import openmm

    from cgflow.reconstruction.backmap import backmap_hydrogens, hydrogen_flow, hydrogen_setup, train_hydrogen_flow
    from cgflow.reconstruction.training import TrainSettings
    from cgflow.systems.alanine import HEAVY_ATOMS

    ala, system, hmap, energy = hydrogen_setup()
    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.002)
    integrator.setRandomNumberSeed(2)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ala.initial_positions())
    frames = []
    for _ in range(16):
        integrator.step(50)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True)._value)
    beads = np.array(frames)[:, list(HEAVY_ATOMS)]
    flow = hydrogen_flow(hmap, transforms=2, hidden=(32,), seed=0)
    rng = np.random.default_rng(0)
    before = backmap_hydrogens(flow, energy, beads, 1, rng)
    result = train_hydrogen_flow(flow, energy, beads, TrainSettings(steps=40, batch=32, lr=3e-3, log_interval=10, seed=1))
    after = backmap_hydrogens(flow, energy, beads, 4, rng)
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    assert np.median(after["energy_kJmol"]) < np.median(before["energy_kJmol"])
    np.testing.assert_allclose(after["xyz"][:, list(HEAVY_ATOMS)], beads, atol=1e-9)
    for k in range(system.getNumConstraints()):
        i, j, length = system.getConstraintParameters(k)
        np.testing.assert_allclose(np.linalg.norm(after["xyz"][:, i] - after["xyz"][:, j], axis=-1), length._value,
                                   rtol=1e-9)
    assert ((after["ess"] >= 1 - 1e-9) & (after["ess"] <= 4 + 1e-9)).all()
