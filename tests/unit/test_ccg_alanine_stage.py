"""The alanine ccg stage's package entry points on a tiny flow: F with ESS flags on a grid, the
reference beside it, backmapped structures mdtraj reads, and training that resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from cgflow.config import load_config  # noqa: E402

TINY = {
    "campaign": "ccg-ala-tiny", "seed": 3,
    "system": {"type": "alanine_dipeptide", "cv": ["phi", "psi"]},
    "analysis": {"bins": 36, "reference": "metadynamics_long", "rmse_cutoff_kT": 8.0},
    "ccg": {"flow": {"transforms": 2, "hidden": [16]},
            "train": {"steps": 12, "batch": 16, "lr": 0.002, "checkpoint_interval": 4},
            "estimate": {"samples_per_point": 40, "grid_points": 4, "bootstrap": 20, "min_ess": 2},
            "backmap": {"frames": 12, "proposals": 60, "max_F_kJmol": 1000.0}},
}


def test_alanine_estimator_on_a_tiny_flow(tmp_path):
    import mdtraj

    from cgflow.analysis.campaign import write_reference
    from cgflow.reconstruction.alanine import HYDROGENS
    from cgflow.reconstruction.campaign import estimation_grid, write_ccg_fes, write_flow

    campaign = load_config(TINY)
    meta = write_flow(campaign, tmp_path)
    assert meta["training"]["energy_evaluations"] == 12 * 16 and meta["system"] == "alanine_dipeptide"
    write_reference(campaign, tmp_path / "reference.csv")
    summary = write_ccg_fes(campaign, tmp_path / "flow.pt", tmp_path / "flow.json", tmp_path, tmp_path / "reference.csv")

    fes = pd.read_csv(tmp_path / "ccg_fes.csv")
    assert len(fes) == 16 and {"phi", "psi", "F_kJmol", "F_err_kJmol", "mean_force_phi_kJmol_rad", "ess",
                               "trusted", "F_ref_kJmol"} <= set(fes)
    np.testing.assert_allclose(fes[["phi", "psi"]].to_numpy(), estimation_grid(campaign), atol=1e-5)
    assert np.isfinite(fes.F_kJmol).all() and np.isfinite(fes.F_err_kJmol).all()
    M = 40
    assert ((fes.ess >= 1 - 1e-9) & (fes.ess <= M + 1e-9)).all()
    np.testing.assert_array_equal(fes.trusted, (fes.ess / M >= 0.2) & (fes.ess >= 2))
    # 12 training steps leave the flow untrusted everywhere (ESS ~1): this test is the stage's
    # plumbing; trust and the free energies are tested on the toys
    # (test_ccg.py) and measured on alanine by `make bench-ccg`
    assert not fes.trusted.any()
    # the reference of the bin holding each point, read straight from the reference file
    ref = pd.read_csv(tmp_path / "reference.csv")
    for _, row in fes.iterrows():
        hit = ref.loc[((ref.phi - row.phi) ** 2 + (ref.psi - row.psi) ** 2).idxmin()]  # the bin's centre
        assert abs(hit.phi - row.phi) < np.pi / 36 and abs(hit.psi - row.psi) < np.pi / 36
        assert row.F_ref_kJmol == pytest.approx(hit.F_kJmol, abs=1e-3) or (np.isnan(hit.F_kJmol) and np.isnan(row.F_ref_kJmol))
    assert summary["reference"] == "metadynamics_long" and summary["vs_reference"]["n_region"] > 0
    assert summary["energy_evaluations_estimate"] == 16 * M
    assert summary["energy_evaluations_backmap"] == 60 == summary["backmapped"]["proposals"]
    assert summary["energy_evaluations_total"] == 12 * 16 + 16 * M + 60

    traj = mdtraj.load(str(tmp_path / "backmapped.dcd"), top=str(tmp_path / "backmapped.pdb"))
    assert traj.n_frames == 12 and traj.n_atoms == 22
    system = campaign.system.build().create_system()
    for k in range(system.getNumConstraints()):  # X-H bonds at their constraint lengths (float32 DCD)
        i, j, length = system.getConstraintParameters(k)
        assert i in HYDROGENS or j in HYDROGENS
        np.testing.assert_allclose(mdtraj.compute_distances(traj, [[i, j]])[:, 0], length._value, atol=2e-5)


def test_alanine_flow_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A reconstruct job killed after its first checkpoint resumes there and ends with the same flow."""
    from cgflow.reconstruction import campaign as stage
    from cgflow.reconstruction.flow import load_flow

    campaign = load_config(TINY)
    straight = tmp_path / "straight"
    stage.write_flow(campaign, straight)

    class Killed(Exception):
        pass

    real = stage.build_energy

    def dying(campaign):
        energy = real(campaign)
        train_energy = energy.training_energy

        def training_energy(s, y):
            if energy.evaluations >= 6 * 16:
                raise Killed
            return train_energy(s, y)

        energy.training_energy = training_energy
        return energy

    killed = tmp_path / "killed"
    monkeypatch.setattr(stage, "build_energy", dying)
    with pytest.raises(Killed):
        stage.write_flow(campaign, killed)
    assert torch.load(killed / "flow.checkpoint.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(stage, "build_energy", real)
    stage.write_flow(campaign, killed)
    assert not (killed / "flow.checkpoint.pt").exists()
    a, _ = load_flow(straight / "flow.pt", straight / "flow.json")
    b, info = load_flow(killed / "flow.pt", killed / "flow.json")
    assert info["training"]["resumed_at_step"] == 4 and info["training"]["energy_evaluations"] == 12 * 16
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y)
    steps = [[h["step"] for h in json.loads((d / "train.json").read_text())["history"]] for d in (straight, killed)]
    assert steps[0] == steps[1]


@pytest.mark.parametrize("solvent", ["vacuum", "obc2"])
def test_stage_energy_is_openmms_energy_in_the_generated_measure(solvent):
    """build_energy for alanine: U_u(s, u) = U_OpenMM(R(s, u)) - kT ln J at the C7eq structure's own
    (s, u), for the configured solvent (OBC2 adds a negative solvation energy)."""
    import openmm

    from cgflow.reconstruction.campaign import build_energy

    campaign = load_config({**TINY, "system": {"type": "alanine_dipeptide", "solvent": solvent},
                            "analysis": {"bins": 36, "reference": "none"}})
    energy = build_energy(campaign)
    ala = campaign.system.build()
    x0 = ala.initial_positions()[None]
    s, u = (torch.as_tensor(v) for v in (energy.geometry.given_values(x0), energy.geometry.codes(x0)))
    xyz, log_j = energy.geometry.to_cartesian(u, s)
    context = openmm.Context(ala.create_system(), openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(xyz[0].numpy())
    direct = context.getState(getEnergy=True).getPotentialEnergy()._value
    kT = campaign.sampling.kT
    assert float(energy(s, u)[0]) == pytest.approx(direct - kT * float(log_j[0]), abs=1e-4)
    vacuum = build_energy(load_config({**TINY, "analysis": {"bins": 36, "reference": "none"}}))
    gap = float(energy(s, u)[0] - vacuum(s, u)[0])
    assert (gap < -10) if solvent == "obc2" else gap == pytest.approx(0, abs=1e-6)
