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
    ({"type": "alanine_dipeptide"}, {}, "toy systems only"),
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
    assert c.ccg is not None and c.ccg.grid_points == (40,)
