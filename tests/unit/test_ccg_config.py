"""The optional ``ccg:`` config section: defaults, absence, stage hash, and clear errors."""

from __future__ import annotations

import pytest

from cgflow.config import ConfigError, load_config

DW2D = {"campaign": "c", "system": {"type": "toy", "potential": "double_well_2d"}, "analysis": {"bins": 30}}


def test_ccg_absent_means_no_ccg_stage():
    assert load_config(DW2D).ccg is None


def test_ccg_defaults():
    c = load_config({**DW2D, "ccg": {}}).ccg
    assert (c.transforms, c.hidden, c.bins) == (3, (64, 64), 8)
    assert (c.steps, c.batch, c.lr, c.conditioning, c.nll_weight) == (1500, 256, 0.003, "grid", 0.0)
    assert c.grid_points == (30,)  # analysis.bins: the points are the fes.csv bin centres
    assert (c.samples_per_point, c.min_ess_fraction, c.min_ess, c.bootstrap, c.max_pareto_k) == (2000, 0.2, 20, 200, None)
    assert not c.needs_fg_samples
    assert load_config({**DW2D, "ccg": {"train": {"nll_weight": 0.5}}}).ccg.needs_fg_samples
    assert load_config({**DW2D, "ccg": {"train": {"conditioning": "samples"}}}).ccg.needs_fg_samples


def test_ccg_stage_hash_ignores_estimation_and_analysis_keys():
    base = load_config({**DW2D, "ccg": {}})
    same = load_config({**DW2D, "analysis": {"bins": 20}, "ccg": {"estimate": {"samples_per_point": 500}}})
    other = load_config({**DW2D, "ccg": {"train": {"steps": 10}}})
    assert base.stage_hash("ccg") == same.stage_hash("ccg") != other.stage_hash("ccg")


@pytest.mark.parametrize("system, ccg, match", [
    ({"type": "alanine_dipeptide", "cv": "phi"}, {}, r"ccg: system.cv 'phi' is not allowed .* allowed: \[phi, psi\]"),
    ({"type": "alanine_dipeptide", "cv": ["psi", "phi"]}, {}, r"allowed: \[phi, psi\], in this order"),
    ({"type": "alanine_dipeptide"}, {"train": {"nll_weight": 1}}, "ccg.train.nll_weight: 1 is not allowed for alanine"),
    ({"type": "alanine_dipeptide"}, {"flow": {"passes": 1}}, "ccg.flow.passes: 1 is not allowed; it must be >= 2"),
    ({"type": "alanine_dipeptide"}, {"backmap": {"frames": 0}}, "ccg.backmap.frames: 0 is not allowed; it must be >= 1"),
    ({"type": "alanine_dipeptide"}, {"backmap": {"max_F_kJmol": -1}}, "ccg.backmap.max_F_kJmol: -1 is not allowed"),
    ({"type": "toy", "potential": "double_well"}, {}, "nothing to reconstruct"),
    ({"type": "toy", "energy": "x^2 + y^2", "cv": "x^2 + y", "box": {"x": [-1, 1], "y": [-1, 1]}}, {}, "not linear"),
    ({"type": "toy", "potential": "double_well_2d"}, {"train": {"conditioning": "cg"}}, "ccg.train.conditioning"),
    ({"type": "toy", "potential": "double_well_2d"}, {"estimate": {"min_ess_fraction": 0}}, "min_ess_fraction"),
    ({"type": "toy", "potential": "double_well_2d"}, {"estimate": {"grid_points": [10, 10]}}, "grid_points"),
    ({"type": "toy", "potential": "double_well_2d"}, {"flow": {"layers": 3}}, "ccg.flow.layers: unknown key"),
])
def test_ccg_bad_configs_are_refused_with_one_sentence(system, ccg, match):
    with pytest.raises(ConfigError, match=match):
        load_config({"campaign": "c", "system": system, "ccg": ccg})


def test_shipped_ccg_example_is_valid():
    from tests.conftest import ROOT

    c = load_config(ROOT / "config" / "examples" / "ccg_double_well.yaml")
    assert c.ccg is not None and c.ccg.grid_points == (40,) and c.ccg.passes is None


def test_alanine_ccg_defaults_and_example():
    from tests.conftest import ROOT

    c = load_config({"campaign": "c", "system": {"type": "alanine_dipeptide", "solvent": "obc2"},
                     "analysis": {"bins": 24}, "ccg": {}}).ccg
    assert c.passes == 2 and c.grid_points == (24, 24) and c.conditioning == "grid"
    assert (c.backmap_frames, c.backmap_proposals, c.backmap_max_F) == (200, 4000, 20.0)
    ex = load_config(ROOT / "config" / "examples" / "ccg_alanine.yaml")
    assert ex.system.type == "alanine_dipeptide" and ex.ccg.batch * ex.ccg.steps <= 200_000
    assert ex.ccg.grid_points == (36, 36) and ex.analysis.bins == (36, 36) and ex.analysis.reference == "metadynamics_long"
