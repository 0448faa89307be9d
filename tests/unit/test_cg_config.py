"""The optional ``cg:`` config section: defaults, absence, and clear errors."""

from __future__ import annotations

import pytest

from cgflow.config import ConfigError, load_config

ALA = {"campaign": "c", "system": {"type": "alanine_dipeptide", "cv": ["phi", "psi"]}}


def test_cg_absent_means_no_cg_stage():
    assert load_config(ALA).cg is None


def test_cg_defaults_and_trainer_settings():
    c = load_config({**ALA, "cg": {"objectives": ["re"], "re_sim_steps": 400}}).cg
    assert c.objectives == ("re",) and c.network == "pair_mlp" and c.n_eff_threshold == 0.9
    s = c.trainer_settings()
    assert s["re"]["sim_steps"] == 400 and s["re"]["report_interval"] == 20 and s["md"]["timestep"] == 0.002
    assert s["re"]["equilibration"] == 200 and s["re"]["max_reuse"] == 10


def test_cg_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="objectives"):
        load_config({**ALA, "cg": {"objectives": ["magic"]}})
    with pytest.raises(ConfigError, match="n_eff_threshold"):
        load_config({**ALA, "cg": {"n_eff_threshold": 1.5}})
    with pytest.raises(ConfigError, match="re_max_reuse"):
        load_config({**ALA, "cg": {"re_max_reuse": 0}})
    with pytest.raises(ConfigError, match="alanine_dipeptide"):  # at validation, not when a job reads .cg
        load_config({"campaign": "t", "system": {"type": "toy", "potential": "double_well"}, "cg": {}})


def test_cg_fg_data_from_the_rounds_makes_them_record_forces():
    own = load_config({**ALA, "cg": {}})
    rounds = load_config({**ALA, "cg": {"fg_data": "rounds"}})
    assert own.cg.fg_data == "own" and not own.records_forces and not load_config(ALA).records_forces
    assert rounds.records_forces
    assert own.stage_hash("cg_data") != rounds.stage_hash("cg_data")
    # the models' hash follows the training keys but not the list of objectives
    assert load_config({**ALA, "cg": {"objectives": ["fm"]}}).stage_hash("cg") == own.stage_hash("cg")
    assert load_config({**ALA, "cg": {"re_epochs": 7}}).stage_hash("cg") != own.stage_hash("cg")
    with pytest.raises(ConfigError, match=r"cg\.fg_data: 'mine' is not allowed; allowed: own, rounds"):
        load_config({**ALA, "cg": {"fg_data": "mine"}})
