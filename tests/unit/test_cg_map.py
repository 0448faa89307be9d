"""CG maps and the FG sampler's recorded forces: alanine's heavy-atom map and force map."""

from __future__ import annotations

import numpy as np
import pytest

from cgflow.sampling.engine import MDSettings, run_replica
from cgflow.systems.alanine import HEAVY_ATOMS, AlanineDipeptide
from cgflow.systems.cg_map import alanine_bead_topology, alanine_map, identity_map


def test_alanine_heavy_atom_map_and_force_map():
    m = alanine_map()
    assert m.n_beads == 10 and m.atoms == HEAVY_ATOMS
    np.testing.assert_array_equal(m.coord.sum(1), 1.0)
    np.testing.assert_array_equal(m.force.sum(0), 1.0)  # each atom's force goes to exactly one bead
    assert {"C_sp3", "C_sp2", "O_sp2", "N_sp2"} <= set(m.type_names)
    assert m.type_names[m.bead_types[0]] == "C_sp3" and m.type_names[m.bead_types[2]] == "O_sp2"
    assert alanine_bead_topology().n_atoms == 10


def test_identity_map():
    m = identity_map(5)
    x = np.random.default_rng(0).normal(size=(3, 5, 3))
    np.testing.assert_array_equal(m.map_positions(x), x)


def test_sampler_records_forces_and_mapped_forces_obey_newtons_third_law(tmp_path):
    system = AlanineDipeptide()
    settings = MDSettings(300.0, 0.002, 1.0, 40, 10, 10, 40)
    frames = run_replica(system, [0], settings, "Reference", {}, 3, tmp_path / "r", record_forces=True)
    assert frames.forces.shape == (4, 22, 3)
    # the recorded forces are the forces at the recorded positions
    import openmm
    import openmm.unit as u

    ctx = openmm.Context(system.create_system(), openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(frames.positions[-1])
    f = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    np.testing.assert_allclose(frames.forces[-1], f, rtol=1e-6, atol=1e-6)
    mapped = alanine_map().map_forces(frames.forces)
    assert np.abs(mapped).max() > 100  # real forces ...
    np.testing.assert_allclose(mapped.sum(1), 0.0, atol=1e-6 * np.abs(mapped).max() * 10)  # ... summing to zero
    np.testing.assert_allclose(alanine_map().map_positions(frames.positions), frames.positions[:, list(HEAVY_ATOMS)])
    assert run_replica(system, [0], settings, "Reference", {}, 3, tmp_path / "s").forces is None


@pytest.mark.parametrize("network", ["pair_mlp", "schnet", "none"])
def test_prior_plus_network_gives_stable_cg_md(network):
    import torch

    from cgflow.sampling.cg_md import langevin_md
    from cgflow.training.bead_campaign import KB, build_model

    rng = np.random.default_rng(0)
    x = alanine_map().map_positions(AlanineDipeptide().initial_positions()[None]) + 0.003 * rng.normal(size=(200, 10, 3))
    model = build_model(x, KB * 300, network=network, hidden=(16,), n_rbf=8)
    tr = langevin_md(model, torch.as_tensor(x[:8]), np.full(10, 14.0), 300.0, 0.002, 200, report_interval=50)
    d = torch.linalg.norm(tr.positions[-1, :, 1] - tr.positions[-1, :, 0], dim=-1)  # CH3-C bond
    b0 = float(np.linalg.norm(x[:, 1] - x[:, 0], axis=-1).mean())
    assert torch.allclose(d, torch.full_like(d, b0), atol=0.03)
