"""Config validation: every bad config gets one sentence naming the key, the value and what is
allowed; good configs load with their defaults filled in; the command line and Snakemake stop
on a bad config with that sentence and no traceback."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from cgflow.config import ConfigError, load_config, schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))

TOY = {"campaign": "t", "system": {"type": "toy", "potential": "double_well"}}
ALA = {"campaign": "a", "system": {"type": "alanine_dipeptide"}}
_DROP = object()


def cfg(base=TOY, **changes):
    """A copy of ``base`` with ``section__key=value`` changes (``_DROP`` removes the key)."""
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def energy(expr, **system):
    """A toy with a user energy (cv x, box x in [-1, 1] unless given)."""
    return {"campaign": "t", "system": {"type": "toy", "energy": expr, "cv": "x", "box": {"x": [-1, 1]}, **system}}


# (config, key the message starts with, the value as the message names it, what is allowed)
BAD = {
    "unknown top-level key": ({**TOY, "rounds": 3}, "rounds", "unknown key", "allowed keys here: analysis, campaign"),
    "typo in a nested key": (cfg(sampling__temprature=300), "sampling.temprature", "unknown key", "temperature, timestep"),
    "typo in a system key": (cfg(system__potental="double_well"), "system.potental", "unknown key", "potential, solvent"),
    "wrong type (string for integer)": (cfg(sampling__walkers="many"), "sampling.walkers", "'many'", "of type integer"),
    "wrong type (float for integer)": (cfg(sampling__steps=1.5), "sampling.steps", "1.5", "of type integer"),
    "wrong type (bool)": (cfg(sampling__pin_cpu="often"), "sampling.pin_cpu", "'often'", "of type boolean"),
    "wrong type (section)": ({**TOY, "sampling": 5}, "sampling", "5", "of type object"),
    "negative temperature": (cfg(sampling__temperature=-10), "sampling.temperature", "-10 is not allowed", "> 0"),
    "zero temperature": (cfg(sampling__temperature=0), "sampling.temperature", "0 is not allowed", "> 0"),
    "timestep 0": (cfg(sampling__timestep=0), "sampling.timestep", "0 is not allowed", "> 0"),
    "timestep too large": (cfg(sampling__timestep=0.05), "sampling.timestep", "0.05 is not allowed", "<= 0.01"),
    "walkers 0": (cfg(sampling__walkers=0), "sampling.walkers", "0 is not allowed", ">= 1"),
    "negative seed": ({**TOY, "seed": -1}, "seed", "-1 is not allowed", ">= 0"),
    "unknown potential": (cfg(system__potential="lennard_jones"), "system.potential", "'lennard_jones' is not allowed",
                          "double_well, double_well_2d, muller_brown"),
    "unknown system type": (cfg(system__type="protein"), "system.type", "'protein'", "toy, alanine_dipeptide"),
    "both potential and energy": (cfg(system__energy="x^2"), "system", "both potential ('double_well') and energy ('x^2')",
                                  "give exactly one of potential"),
    "neither potential nor energy": (cfg(system__potential=_DROP), "system", "neither potential nor energy",
                                     "give exactly one of potential (built-in: double_well"),
    "energy OpenMM cannot parse (x^^2)": (energy("x^^2"), "system.energy", "'x^^2'", "is not a valid expression"),
    "energy with unknown function": (energy("foo(x)"), "system.energy", "'foo' is not allowed", "Lepton functions"),
    "energy Lepton rejects (min with one argument)": (energy("min(x^2)"), "system.energy", "'min(x^2)'",
                                                      "is not accepted by OpenMM"),
    "energy __import__": (energy("__import__('os')"), "system.energy", "'__import__' is not allowed",
                          "variables: x, y, z"),
    "energy attribute access": (energy("x.real"), "system.energy", "'.' is not allowed", "operators + - * / ^"),
    "energy without coordinates": (energy("3"), "system.energy", "'3'", "depends on none of x, y, z"),
    "energy not finite in the box": (energy("log(-x^2-1)"), "system.energy", "'log(-x^2-1)'", "not finite"),
    "energy without cv": (cfg(energy("x^2"), system__cv=_DROP), "system.cv", "missing", "e.g. x or [x, y]"),
    "energy without box": (cfg(energy("x^2"), system__box=_DROP), "system.box", "missing", "e.g. {x: [-2, 2]}"),
    "cv naming no coordinate (number)": (cfg(system__cv="3"), "system.cv", "'3' names no coordinate",
                                         "allowed: x, y, z or an expression"),
    "cv naming no coordinate (unknown name)": (cfg(system__cv="q"), "system.cv", "'q' is not allowed",
                                               "variables: x, y, z"),
    "cv with a Python trick": (cfg(system__cv="x.imag"), "system.cv", "'.' is not allowed", "operators"),
    "cv Lepton rejects": (cfg(system__cv="max(x)"), "system.cv", "'max(x)'", "is not accepted by OpenMM"),
    "cv column used twice": (cfg(system__cv=["x", "x"]), "system.cv", "'x' is used twice", "{name: expression}"),
    "cv column reserved": (cfg(system__cv={"step": "x"}), "system.cv", "'step' is reserved", "{name: expression}"),
    "cv mapping with a bad name": (cfg(system__cv={"1s": "x"}), "system.cv", "'1s' is not allowed",
                                   "letters, digits and _"),
    "cv mapping with two keys": (cfg(system__cv={"a": "x", "b": "x"}), "system.cv", '{"a": "x", "b": "x"}',
                                 "at most 1 key"),
    "cv list empty": (cfg(system__cv=[]), "system.cv", "[]", "at least 1 item"),
    "cv list too long": (cfg(energy("x^2+y^2+z^2", box={"x": [-1, 1], "y": [-1, 1], "z": [-1, 1]}),
                             system__cv=["x", "y", "z", "x+y"]), "system.cv", '["x", "y", "z", "x+y"]', "at most 3 items"),
    "cv of the wrong type": (cfg(system__cv=3), "system.cv", "3 is not allowed", "one-key mapping {name: expression}"),
    "box missing a coordinate the energy uses": (energy("x^2+y^2"), "system.box", '{"x": [-1, 1]} has no range for y',
                                                 "[low, high] range"),
    "default box missing a coordinate the cv uses": (cfg(system__cv="y"), "system.box",
                                                     "(the default box of double_well) has no range for y", "[low, high]"),
    "box reversed": (cfg(system__box={"x": [2, -2]}), "system.box.x", "[2, -2] is not allowed", "low < high"),
    "box not containing the minimum": (cfg(system__box={"x": [1.5, 3]}), "system.box", '{"x": [1.5, 3]}',
                                       "does not contain the energy minimum"),
    "box range of three numbers": (cfg(system__box={"x": [-2, 0, 2]}), "system.box.x", "[-2, 0, 2]", "at most 2 items"),
    "box of an unknown coordinate": (cfg(system__box={"w": [0, 1]}), "system.box.w", "unknown key", "x, y, z"),
    "mass 0": (cfg(system__mass=0), "system.mass", "0 is not allowed", "> 0"),
    "bad campaign name (space)": ({**TOY, "campaign": "my campaign"}, "campaign", "'my campaign' is not allowed",
                                  "letters, digits, _ . -"),
    "bad campaign name (path)": ({**TOY, "campaign": "../elsewhere"}, "campaign", "'../elsewhere'", "letters, digits"),
    "missing campaign": ({"system": TOY["system"]}, "campaign", "missing", "results/<campaign>/"),
    "missing system": ({"campaign": "t"}, "system", "missing", "required"),
    "alanine with chi": (cfg(ALA, system__cv=["phi", "chi"]), "system.cv", "'chi' is not allowed for alanine_dipeptide",
                         "allowed: phi, psi"),
    "alanine with a renamed phi": (cfg(ALA, system__cv={"a": "phi"}), "system.cv", '{"a": "phi"}', "no expressions or renaming"),
    "alanine with phi twice": (cfg(ALA, system__cv=["phi", "phi"]), "system.cv", '["phi", "phi"]', "at most once"),
    "alanine with box": (cfg(ALA, system__box={"x": [-1, 1]}), "system.box", '{"x": [-1, 1]} is not allowed for alanine',
                         "only for toy systems"),
    "alanine with potential": (cfg(ALA, system__potential="double_well"), "system.potential", "'double_well'",
                               "only for toy systems"),
    "alanine with unknown solvent": (cfg(ALA, system__solvent="tip3p"), "system.solvent", "'tip3p'", "vacuum, obc2"),
    "toy with solvent": (cfg(system__solvent="obc2"), "system.solvent", "'obc2' is not allowed for a toy",
                         "only for alanine_dipeptide"),
    "bins list of wrong length": (cfg(analysis__bins=[10, 20]), "analysis.bins", "[10, 20] has 2 entries for 1 CV(s)",
                                  "one number or one per CV"),
    "bins too few": (cfg(analysis__bins=1), "analysis.bins", "1 is not allowed", ">= 2"),
    "bins list entry too few": (cfg(analysis__bins=[1]), "analysis.bins.0", "1 is not allowed", ">= 2"),
    "bins of the wrong type": (cfg(analysis__bins="many"), "analysis.bins", "'many' is not allowed", "one number, or one per CV"),
    "reference exact for alanine": (cfg(ALA, analysis__reference="exact"), "analysis.reference", "'exact' needs a toy",
                                    "give none, metadynamics_long or the path"),
    "reference path that does not exist": (cfg(analysis__reference="no/such/fes.csv"), "analysis.reference",
                                           "'no/such/fes.csv' is not allowed", "allowed for toy: exact, none, metadynamics_long, or the path"),
    "report_interval > steps": (cfg(sampling__steps=100, sampling__report_interval=500), "sampling.report_interval",
                                "500 is not allowed", "<= sampling.steps (100)"),
    "bad platform": (cfg(sampling__platform="GPU"), "sampling.platform", "'GPU' is not allowed",
                     "auto, CPU, CUDA, OpenCL, Reference"),
    "rmse cutoff 0": (cfg(analysis__rmse_cutoff_kT=0), "analysis.rmse_cutoff_kT", "0 is not allowed", "> 0"),
    "start outside the box": (cfg(system__start={"x": 5.0}), "system.start.x", "5.0 nm is outside system.box.x",
                              "start the walkers inside the box"),
    "start where the energy is not finite": (energy("x^2 + 1/(x-0.5)^2", start={"x": 0.5}), "system.start",
                                             '{"x": 0.5} is where the energy is not finite', "start the walkers where"),
    "peers without a reference": (cfg(ALA, analysis__peers=["unbiased"]), "analysis.peers", "['unbiased'] needs a reference",
                                  "metadynamics_long or a fes.csv"),
    "cg stage on a toy": ({**TOY, "cg": {}}, "cg", "not 'toy'", "needs system.type alanine_dipeptide"),
    "cg FG run shorter than its stride": (cfg(ALA, cg={"fg_steps": 1000, "fg_stride": 5000}), "cg.fg_stride",
                                          "5000 is not allowed", "<= cg.fg_steps (1000)"),
    "TRAM lag as long as a round": (cfg(sampling__steps=200, sampling__report_interval=100, guidance__rounds=3,
                                        guidance__markov_lag=1.0), "guidance.markov_lag", "1.0 ps (5 frames)",
                                    "guidance.estimator: mbar"),
    "bias grid too fine for 3 CVs": (cfg(energy("x^2+y^2+z^2", box={"x": [-1, 1], "y": [-1, 1], "z": [-1, 1]}),
                                         system__cv=["x", "y", "z"], guidance__bias_grid=512), "guidance.bias_grid",
                                     "512 is too fine for 3 CVs (1.34e+08 points or cells)", "<= 2e+06"),
    "analysis bins too fine for 2 CVs": (cfg(energy("x^2+y^2", box={"x": [-1, 1], "y": [-1, 1]}), system__cv=["x", "y"],
                                             analysis__bins=[2000, 2000]), "analysis.bins", "[2000, 2000] is too fine",
                                         "<= 2e+06"),
    "seed_cells neither auto nor a number": (cfg(guidance__seed_cells="many"), "guidance.seed_cells",
                                             "'many' is not allowed", "auto or an integer >= 1 and <= 64"),
}


@pytest.mark.parametrize("config, key, value, allowed", BAD.values(), ids=BAD.keys())
def test_bad_config_names_key_value_and_what_is_allowed(config, key, value, allowed):
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert value in message, message
    assert allowed in message, message
    assert "\n" not in message


def test_a_valid_reference_path_is_accepted(tmp_path):
    (tmp_path / "ref.csv").write_text("x,F_kJmol\n0,0\n")
    # a relative path is resolved once, so every job finds the same file wherever it runs
    assert load_config(cfg(analysis__reference="ref.csv"), base_dir=tmp_path).analysis.reference == str(tmp_path / "ref.csv")
    assert load_config(cfg(analysis__reference=str(tmp_path / "ref.csv"))).analysis.reference.endswith("ref.csv")


@pytest.mark.parametrize(
    "text, fragment",
    [("campaign: [t\n", "is not valid YAML: line 2, column 1"), ("a: b: c\n", "line 1, column 5: mapping values"),
     ("", "the config is empty"), ("- 1\n", "the config is a list"),
     ("campaign: t\nsampling: {walkers: 4}\nsampling: {steps: 900}\n",
      "line 3, column 1: key 'sampling' is given twice (first on line 2)")],
    ids=["unclosed list", "nested colon", "empty file", "a list", "a section twice"],
)
def test_bad_yaml_file(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_an_initial_bias_or_reference_file_is_checked_for_its_cvs(tmp_path):
    from cgflow.guidance.bias import BiasGrid

    phi_psi = tmp_path / "ala.npz"
    BiasGrid.zeros(("phi", "psi"), (-3.1416, -3.1416), (3.1416, 3.1416), (True, True), 11).save(phi_psi)
    with pytest.raises(ConfigError, match=r"^guidance.initial_bias: .* a bias on \['phi', 'psi'\], not on .*\['x'\]"):
        load_config(cfg(guidance__initial_bias=str(phi_psi)))
    assert load_config(cfg(ALA, guidance__initial_bias=str(phi_psi))).guidance.initial_bias == str(phi_psi)
    (tmp_path / "notes.txt").write_text("not a bias")
    with pytest.raises(ConfigError, match=r"^guidance.initial_bias: .* is not a cgflow bias.npz"):
        load_config(cfg(guidance__initial_bias=str(tmp_path / "notes.txt")))
    (tmp_path / "fes.csv").write_text("x,F\n0,0\n")
    with pytest.raises(ConfigError, match=r"^analysis.reference: .* has no column F_kJmol; .*columns found: x, F\)"):
        load_config(cfg(analysis__reference=str(tmp_path / "fes.csv")))


def test_a_reference_that_is_neither_a_method_nor_a_file_names_what_is_allowed(tmp_path):
    from cgflow.config import REFERENCE_METHODS

    with pytest.raises(ConfigError, match=r"^analysis.reference: 'nowhere.csv' is not allowed; allowed for toy: exact, ") as info:
        load_config(cfg(analysis__reference="nowhere.csv"))
    assert all(m in str(info.value) for m in REFERENCE_METHODS)
    molecule_methods = ", ".join(m for m in REFERENCE_METHODS if m != "exact")
    with pytest.raises(ConfigError, match=rf"^analysis.reference: 'nowhere.csv' is not allowed; allowed for "
                                          rf"alanine_dipeptide: {molecule_methods}, or the path"):
        load_config(cfg(ALA, analysis__reference="nowhere.csv"))
    with pytest.raises(ConfigError, match=rf"^analysis.reference: 'exact' needs a toy system; for alanine_dipeptide give "
                                          rf"{molecule_methods} or the path"):
        load_config(cfg(ALA, analysis__reference="exact"))


def test_a_section_with_every_key_commented_out_takes_its_defaults():
    assert load_config({**TOY, "guidance": None}).resolved == load_config(TOY).resolved


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nothere\.yaml' does not exist"):
        load_config(tmp_path / "nothere.yaml")
    with pytest.raises(ConfigError, match="cannot be read as text"):
        load_config(tmp_path)


# --- good configs --------------------------------------------------------------------------------
def test_default_config_loads():
    campaign = load_config(ROOT / "config" / "config.yaml")
    assert campaign.name == "mb-demo"
    assert campaign.system.potential == "muller_brown" and campaign.system.cv_names == ("x",)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_and_says_what_it_shows(path):
    campaign = load_config(path)
    assert path.read_text().startswith("#"), f"{path.name} needs a header comment"
    assert campaign.system.build() is not None


def test_the_examples_are_there_with_distinct_campaign_names():
    names = {p.stem for p in EXAMPLES}
    assert {"double_well", "expression", "muller_brown_2d", "alanine_vacuum", "alanine_obc2"} <= names
    campaigns = [load_config(p).name for p in EXAMPLES] + [load_config(ROOT / "config" / "config.yaml").name]
    assert len(set(campaigns)) == len(campaigns)


def test_the_benchmark_campaigns_are_valid_configs(bench_rounds):
    """bench-rounds runs for hours: a key or value the schema no longer takes must fail here."""
    assert set(bench_rounds.SYSTEMS) == {"mb", "mb150", "dw2d", "alanine"}
    for name, config in bench_rounds.SYSTEMS.items():
        campaign = load_config(copy.deepcopy(config))
        assert campaign.name == config["campaign"] and campaign.guidance.rounds > 0, name


def test_the_benchmark_oracle_flattens_the_reference_and_spends_the_same_budget(tmp_path, bench_rounds):
    """bench-rounds' oracle runs the reference's well-tempered bias from the first FG step: under
    it, F_ref + bias must be F_ref / gamma below the cap (barrier), and its one round must be scored at
    cgflow's budget points."""
    import numpy as np

    from cgflow.analysis.campaign import cv_edges, write_reference
    from cgflow.analysis.convergence import budget_schedule
    from cgflow.analysis.fes import read_fes_csv
    from cgflow.guidance.bias import BiasGrid

    for name in ("dw2d", "alanine"):
        config = copy.deepcopy(bench_rounds.SYSTEMS[name])
        campaign = load_config(config)
        reference = tmp_path / f"{name}.csv"
        write_reference(campaign, reference)
        bias_path = tmp_path / f"{name}.npz"
        bench_rounds.ideal_bias(config, reference, bias_path)
        oracle = load_config(bench_rounds.oracle_config(name, 3, bias_path))
        assert oracle.guidance.rounds == 0 and oracle.guidance.initial_bias == str(bias_path.resolve())
        assert list(oracle.analysis.peers) == ["metadynamics"] and oracle.analysis.metadynamics == campaign.analysis.metadynamics
        np.testing.assert_array_equal(budget_schedule(oracle), budget_schedule(campaign))

        F = read_fes_csv(reference, list(campaign.system.cv_names)).F
        F = F - np.nanmin(F)
        mesh = np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in cv_edges(campaign)], indexing="ij")
        centres = np.stack([m.ravel() for m in mesh], axis=-1)
        grid = BiasGrid.load(bias_path)
        V = grid(centres).reshape(F.shape)
        g = campaign.guidance
        cap = g.barrier if g.barrier is not None else (1 - 1 / g.gamma) * np.nanmax(F)
        low = F < 6 * campaign.sampling.kT  # well below the cap on both systems
        assert grid.values.max() <= cap + 1e-9 and grid.values.min() >= 0, name
        flat = (F + V - F / g.gamma)[low]
        # the corners' averaging (alanine's periodic bins) smooths the bias a little: measured spread
        # 0.93 kJ/mol (0.37 kT) on alanine, 0 on the 2-D double well
        assert np.ptp(flat) < 0.5 * campaign.sampling.kT, (name, np.ptp(flat))


def test_the_benchmark_table_counts_the_seeds_where_the_oracle_is_within_0_7x_metadynamics(bench_rounds):
    """bench-rounds' last lines judge the target against what a bias known in advance gives, seed
    by seed, beside metadynamics on the same seed (a metadynamics that never gets there counts as
    beaten)."""
    def method(first, stay, final=0.3):
        return {"curve": [[100_000, 2.0], [200_000, final]], "steps_to_target": first, "steps_to_stay": stay}

    conv = {"target_kT": 0.4, "wall_s": 1.0, "cgflow": method(200_000, 200_000), "unbiased": method(None, None, 2.0),
            "metadynamics": method(100_000, 200_000),
            "oracle": {1: {"oracle": method(100_000, 200_000), "metadynamics": method(200_000, 200_000)},
                       2: {"oracle": method(100_000, None), "metadynamics": method(None, None, 0.5)},
                       3: {"oracle": method(200_000, 200_000), "metadynamics": method(200_000, 200_000)}}}
    lines = bench_rounds.table("alanine", conv)
    assert "  cgflow/metadynamics =      2.000   (target <= 0.7; first hit)" in lines
    assert any(line.startswith("    seed 1: oracle 100,000 / 200,000") and line.endswith(
        "oracle/metadynamics: first hit 0.500, staying below 1.000") for line in lines)
    assert any(line.endswith("oracle/metadynamics: first hit < 0.500, staying below n/a (the oracle did not reach the "
                             "target)") for line in lines)
    assert lines[-1] == "  oracle within 0.7x metadynamics on 2 of 3 seeds (first hit), 0 of 3 (staying below)"


def test_the_benchmark_long_unbiased_run_is_plain_md_for_ten_times_the_budget(bench_rounds):
    """bench-rounds bounds cgflow/unbiased with plain MD for 10x the campaign's budget: one round
    with no bias from the same walkers, scored at as many budget points, 10x as far apart."""
    import numpy as np

    from cgflow.analysis.convergence import budget_schedule

    for name, config in bench_rounds.SYSTEMS.items():
        campaign = load_config(copy.deepcopy(config))
        long = load_config(bench_rounds.unbiased_config(name, 10))
        assert long.guidance.rounds == 0 and long.guidance.initial_bias is None and not long.analysis.peers, name
        assert long.sampling.walkers == campaign.sampling.walkers and long.seed == campaign.seed, name
        # per-walker steps: each point an integer, so 10x a rounded point is at most 10 steps off
        np.testing.assert_allclose(budget_schedule(long), 10 * budget_schedule(campaign), atol=10, rtol=0)


def test_defaults_are_filled():
    campaign = load_config(TOY)
    r = campaign.resolved
    assert r["seed"] == 1
    assert r["sampling"] == {"temperature": 300.0, "timestep": 0.002, "friction": 1.0, "walkers": 64, "steps": 20000,
                             "equilibration": 0, "report_interval": 100, "checkpoint_interval": 10000,
                             "platform": "auto", "pin_cpu": True}
    assert r["analysis"]["bins"] == 50 and r["analysis"]["reference"] == "exact"
    assert r["system"]["box"] == {"x": [-2.0, 2.0]} and r["system"]["cv"] == "x"
    assert campaign.sampling.walkers == 64
    assert campaign.sampling.kT == pytest.approx(2.494, abs=1e-3)
    assert campaign.analysis.bins == (50,)


def test_molecule_defaults():
    campaign = load_config(ALA)
    assert campaign.resolved["system"]["solvent"] == "vacuum"
    assert campaign.system.cv_names == ("phi", "psi")
    assert campaign.analysis.reference == "none"
    assert campaign.analysis.bins == (50, 50)


@pytest.mark.parametrize("cv, walkers, cells", [("x", 32, 4), ("x", 64, 4), ("x", 4, 2), ("x", 2, 1),
                                                 (["x", "y"], 32, 4), (["x", "y"], 8, 2), (["x", "y"], 6, 1)])
def test_seed_cells_auto_leaves_two_walkers_per_cell(cv, walkers, cells):
    config = copy.deepcopy(TOY)
    config["system"] = {"type": "toy", "potential": "double_well_2d", "cv": cv}
    config["sampling"] = {"walkers": walkers}
    assert load_config(config).guidance.seed_cells == cells
    config["guidance"] = {"seed_cells": 3}
    assert load_config(config).guidance.seed_cells == 3


@pytest.mark.parametrize("cv, bins", [("x", 32), (["x", "y"], 16)])
def test_markov_bins_default_by_the_number_of_cvs(cv, bins):
    config = copy.deepcopy(TOY)
    config["system"] = {"type": "toy", "potential": "double_well_2d", "cv": cv}
    campaign = load_config(config)
    assert campaign.guidance.markov_bins == bins and campaign.resolved["guidance"]["markov_bins"] == bins
    config["guidance"] = {"markov_bins": 24}
    assert load_config(config).guidance.markov_bins == 24


def test_strings_from_snakemake_config_option_are_read_as_yaml():
    # `snakemake --config 'sampling={walkers: 8}'` hands nested values over as strings
    campaign = load_config(cfg(sampling={"walkers": "8", "temperature": "310.5", "pin_cpu": "false"},
                               system__box={"x": ["-2", "2.0"]}, analysis={"bins": "30"}))
    assert campaign.sampling.walkers == 8 and campaign.sampling.temperature == 310.5
    assert campaign.sampling.pin_cpu is False
    assert campaign.resolved["system"]["box"] == {"x": [-2, 2.0]} and campaign.analysis.bins == (30,)
    assert campaign.stage_hash("sampling") == load_config(
        cfg(sampling={"walkers": 8, "temperature": 310.5, "pin_cpu": False}, system__box={"x": [-2, 2.0]})
    ).stage_hash("sampling")
    with pytest.raises(ConfigError, match=r"^sampling.walkers: '8.5' must be of type integer"):
        load_config(cfg(sampling__walkers="8.5"))


def test_loading_does_not_change_the_given_dict():
    given = cfg(sampling__walkers=4)
    before = copy.deepcopy(given)
    load_config(given)
    assert given == before


def test_builtin_2d_potential_box_and_bins_per_cv():
    campaign = load_config(cfg(system__potential="muller_brown", system__cv=["x", "y"], analysis__bins=[30, 40]))
    assert campaign.resolved["system"]["box"] == {"x": [-1.5, 1.2], "y": [-0.2, 2.0]}
    assert campaign.analysis.bins == (30, 40)


@pytest.mark.parametrize(
    "cv, names",
    [("x", ("x",)), ("0.8*x-0.6*y", ("cv",)), ({"s": "0.8*x-0.6*y"}, ("s",)), (["x", "y"], ("x", "y")),
     (["x+y", "x-y"], ("cv1", "cv2")), (["x", {"d": "x-y"}], ("x", "d"))],
    ids=["coordinate", "unnamed linear combination", "named mapping", "two coordinates", "two unnamed", "mixed"],
)
def test_cv_column_names(cv, names):
    campaign = load_config(energy("x^2+y^2", cv=cv, box={"x": [-1, 1], "y": [-1, 1]}))
    assert campaign.system.cv_names == names


def test_stage_hash_ignores_analysis_but_not_sampling():
    base = load_config(TOY)
    analysis_only = load_config(cfg(analysis__bins=80, analysis__bootstrap=50))
    more_steps = load_config(cfg(sampling__steps=40000))
    assert analysis_only.stage_hash("sampling") == base.stage_hash("sampling")
    assert analysis_only.hash != base.hash
    assert more_steps.stage_hash("sampling") != base.stage_hash("sampling")
    assert load_config(cfg(seed=2)).stage_hash("sampling") != base.stage_hash("sampling")
    assert load_config(cfg(sampling__checkpoint_interval=123)).stage_hash("sampling") == base.stage_hash("sampling")


def test_workflow_schema_is_the_package_schema():
    link = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "cgflow" / "schemas" / "config.schema.yaml").resolve()


def _schema_keys(node, prefix=""):
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path
        yield from _schema_keys(sub, f"{path}.")


def test_readme_documents_every_schema_key():
    readme = (ROOT / "config" / "README.md").read_text()
    # a coordinate of system.box / system.start may be written `.y` after the first one in full
    missing = [k for k in _schema_keys(schema())
               if f"`{k}`" not in readme and not (k[-2:] in (".y", ".z") and f"`{k[:-2]}.x`, `.y`, `.z`" in readme)]
    assert not missing, f"config/README.md does not document {missing}"


# --- command line -----------------------------------------------------------------------------------
BAD_YAML = "campaign: t\nsystem: {type: toy, potential: double_well}\nsampling: {walkers: 0}\n"
BAD_MESSAGE = "cgflow: bad config: sampling.walkers: 0 is not allowed; it must be >= 1"


@pytest.mark.parametrize("text, message", [(BAD_YAML, BAD_MESSAGE), ("campaign: [t\n", "cgflow: bad config: config file")],
                         ids=["bad value", "bad yaml"])
def test_cgflow_validate_exits_2_with_one_line(tmp_path, cli_env, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = subprocess.run(["cgflow", "validate", str(bad)], capture_output=True, text=True, env=cli_env, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_cgflow_validate_prints_the_resolved_config(cli_env):
    out = subprocess.run(["cgflow", "validate", str(EXAMPLES[0])], capture_output=True, text=True, env=cli_env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["sampling"]["platform"]


@pytest.mark.workflow
def test_snakemake_dry_run_stops_on_a_bad_config(tmp_path, cli_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    out = subprocess.run(["snakemake", "-n", "--configfile", str(bad)], cwd=ROOT, capture_output=True, text=True,
                         env=cli_env, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert [line for line in text.splitlines() if line.startswith("cgflow: bad config:")] == [BAD_MESSAGE], text
    assert "Traceback" not in text
