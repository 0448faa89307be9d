"""The bead-CG stage learning from the biased sampling rounds (``cg.fg_data: rounds``).

A tiny two-round alanine campaign: round 1 samples under the CG-guided bias, every round also
writes its frames' FG forces, and the cg stage maps them and carries each frame's unbiased
(TRAM) weight into the prior fit and the FG averages. Checked: the recorded forces are the FG
forces without the bias, the mapped data are the rounds' frames in order with the weights of
the last round's weights.parquet, the prior is the weighted fit, not the plain one, and round
1's walkers start from the very frames of round 0 their starts name."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow.test_workflow import snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CONFIG = {
    "campaign": "ala-cgr", "seed": 1,
    "system": {"type": "alanine_dipeptide", "solvent": "vacuum", "cv": ["phi", "psi"]},
    "sampling": {"walkers": 2, "steps": 4000, "report_interval": 20, "equilibration": 200, "platform": "Reference"},
    "guidance": {"rounds": 1, "train_steps": 100},
    "analysis": {"bins": 12, "reference": "none", "bootstrap": 5},
    "cg": {"objectives": ["fm"], "fg_data": "rounds", "fm_epochs": 2, "md_steps": 200, "md_replicas": 4},
}


@pytest.fixture(scope="module")
def campaign_dir(tmp_path_factory):
    import os

    from tests.conftest import BIN

    where = tmp_path_factory.mktemp("cg-rounds")
    config = where / "campaign.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    stale = where / "results" / "ala-cgr" / "cg" / ".work-fg"  # a killed own run's, before the switch to rounds
    stale.mkdir(parents=True)
    (stale / "chunk-0000002000.npz").write_bytes(b"")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = snakemake("--configfile", config, "-d", where, "--cores", "2", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return where / "results" / "ala-cgr"


def test_an_own_runs_leftover_work_folder_goes_with_the_switch_to_rounds(campaign_dir):
    assert (campaign_dir / "cg" / "fg_mapped.npz").exists()
    assert not (campaign_dir / "cg" / ".work-fg").exists()


def test_rounds_record_the_fg_forces_without_the_bias(campaign_dir):
    import openmm

    from cgflow.systems.alanine import AlanineDipeptide

    samples = pd.read_parquet(campaign_dir / "round-01" / "samples.parquet")
    assert samples.bias_energy_kJmol.abs().max() > 0.5, "round 1 must run under a real bias"
    with np.load(campaign_dir / "round-01" / "forces.npz") as f:
        assert np.array_equal(f["walker"], samples.walker) and np.array_equal(f["step"], samples.step)
        positions, forces = f["positions"], f["forces"]
    context = openmm.Context(AlanineDipeptide().create_system(), openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    for i in range(0, len(positions), 40):
        context.setPositions(positions[i])
        state = context.getState(getForces=True, getEnergy=True)
        expected = state.getForces(asNumpy=True)._value
        np.testing.assert_allclose(forces[i], expected, rtol=1e-6, atol=1e-6)
        assert state.getPotentialEnergy()._value == pytest.approx(samples.potential_energy_kJmol[i], abs=1e-4)


def test_cg_data_are_the_rounds_frames_with_their_unbiased_weights(campaign_dir):
    import torch

    from cgflow.models.priors import Prior
    from cgflow.systems.alanine import HEAVY_ATOMS, AlanineDipeptide
    from cgflow.systems.cg_map import alanine_map, bead_bonds

    with np.load(campaign_dir / "cg" / "fg_mapped.npz") as f:
        data = {k: f[k] for k in f.files}
    assert str(data["platform"]) == "Reference"
    positions, forces = [], []
    for k in (0, 1):
        with np.load(campaign_dir / f"round-{k:02d}" / "forces.npz") as f:
            positions.append(f["positions"])
            forces.append(f["forces"])
    cmap = alanine_map()
    np.testing.assert_array_equal(data["x"], cmap.map_positions(np.concatenate(positions)))
    np.testing.assert_array_equal(data["f"], cmap.map_forces(np.concatenate(forces)))
    weights = pd.read_parquet(campaign_dir / "round-01" / "weights.parquet").sort_values(["round", "walker", "step"])
    np.testing.assert_allclose(data["weights"], weights.weight / weights.weight.sum(), rtol=1e-12)
    assert data["weights"].std() > 0.1 * data["weights"].mean(), "biased rounds give unequal weights"

    kT = 0.0083144626181532 * 300.0
    bonds = bead_bonds(AlanineDipeptide().topology(), HEAVY_ATOMS)
    weighted = Prior.fit(data["x"], bonds, kT, weights=data["weights"])
    plain = Prior.fit(data["x"], bonds, kT)
    state = torch.load(campaign_dir / "cg" / "fm" / "model.pt", weights_only=True)["state_dict"]
    np.testing.assert_allclose(state["prior.dih"].numpy(), weighted.dih.numpy(), rtol=1e-10)
    assert not np.allclose(state["prior.dih"].numpy(), plain.dih.numpy(), rtol=1e-3)
    summary = json.loads((campaign_dir / "cg" / "fm" / "summary.json").read_text())
    assert np.isfinite(summary["fes_rmse_vs_fg_kT"])
    assert summary["fg_data"] == "rounds" and summary["fg_platform"] == "Reference"


def test_walker_starts_are_the_recorded_frames_they_name(campaign_dir):
    from cgflow.systems.alanine import AlanineDipeptide

    samples = pd.read_parquet(campaign_dir / "round-00" / "samples.parquet")
    with np.load(campaign_dir / "round-00" / "starts.npz") as s:
        rows = [samples.index[(samples.walker == w) & (samples.step == t)][0]
                for w, t in zip(s["source_walker"], s["source_step"])]
        # read back from the trajectory, in single precision
        angles = AlanineDipeptide().cv_values(s["positions"])
    delta = np.angle(np.exp(1j * (angles - samples.loc[rows, ["phi", "psi"]].to_numpy())))
    assert np.abs(delta).max() < 1e-3
