"""The Snakemake workflow: dry-runs of every shipped config, and a real tiny campaign end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.workflow

CONFIGS = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]


def planned_rules(dry_run_stdout: str) -> set[str]:
    """Rule names in the 'Job stats' table of a dry run."""
    table = dry_run_stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.split() and line.split()[0] != "total"}


def snakemake(*args, cwd=ROOT, env=None):
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run_shows_the_whole_campaign(config, tmp_path, cli_env):
    out = snakemake("-n", "--configfile", config, "-d", tmp_path, env=cli_env)
    assert out.returncode == 0, out.stderr
    assert {"sample", "fes", "plots", "all"} <= planned_rules(out.stdout), out.stdout


def test_lint_is_clean(cli_env):
    out = snakemake("--lint", env=cli_env)
    assert "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr


TINY = {
    "campaign": "tiny",
    "seed": 3,
    "system": {"type": "toy", "potential": "double_well"},
    "sampling": {"walkers": 32, "steps": 40000, "equilibration": 2000, "report_interval": 50},
    "analysis": {"bins": 30, "bootstrap": 50},
}


def test_tiny_campaign_end_to_end(tmp_path, cli_env):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = snakemake("--configfile", config, "-d", tmp_path, "--cores", "2", env=cli_env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "tiny"

    summary = json.loads((results / "summary.json").read_text())
    assert summary["fg_steps_total"] == 32 * 42000
    assert summary["reference_coverage"] == 1.0
    assert summary["rmse_vs_reference_kT"] < 0.3
    assert summary["provenance"]["versions"]["openmm"]
    # TINY leaves sampling.platform at auto: resolved by timing real Contexts on this machine
    from cgflow.analysis.campaign import read_provenance_of
    from cgflow.sampling.platform import available_platforms

    sampled = read_provenance_of(results / "round-00" / "samples.parquet", "samples.parquet")
    assert sampled["platform"] in available_platforms(), sampled["platform"]

    fes = pd.read_csv(results / "fes.csv")
    assert list(fes.columns) == ["x", "F_kJmol", "F_err_kJmol", "F_cg_kJmol", "connected_share", "F_ref_kJmol"]
    assert len(fes) == 30 and fes.F_kJmol.min() == 0.0
    for name in ("fes", "cv_histogram", "walker_traces"):
        assert (results / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = snakemake("--configfile", config, "-d", tmp_path, "--report", results / "report.html", env=cli_env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "fes.png" in (results / "report.html").read_text()

    # an analysis-only change reruns the analysis but keeps the samples
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**TINY, "analysis": {"bins": 20}}))
    dry = snakemake("-n", "--configfile", changed, "-d", tmp_path, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    planned = planned_rules(dry.stdout)
    assert "fes" in planned and "sample" not in planned, dry.stdout

    # a sampling change reruns the sampling, at once (not after a run on the old samples)
    hotter = tmp_path / "hotter.yaml"
    hotter.write_text(yaml.safe_dump({**TINY, "sampling": {**TINY["sampling"], "temperature": 310.0}}))
    dry = snakemake("-n", "--configfile", hotter, "-d", tmp_path, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert {"sample", "fes"} <= planned_rules(dry.stdout), dry.stdout


def test_the_default_campaign_is_planned_from_any_directory(tmp_path, cli_env):
    out = snakemake("-n", "-d", tmp_path, cwd=tmp_path, env=cli_env)
    assert out.returncode == 0, out.stderr
    assert "results/mb-demo/round-03/samples.parquet" in out.stdout


def test_a_section_given_twice_in_the_config_file_stops_snakemake(tmp_path, cli_env):
    """YAML keeps the last of a key given twice, and Snakemake reads the file its own way."""
    config = tmp_path / "twice.yaml"
    config.write_text(yaml.safe_dump(TINY) + "sampling: {temperature: 250.0}\n")
    out = snakemake("-n", "--configfile", config, "-d", tmp_path, env=cli_env)
    assert out.returncode != 0
    assert "key 'sampling' is given twice" in out.stderr and "Traceback" not in out.stderr


def test_bad_config_stops_before_any_job(tmp_path, cli_env):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**TINY, "sampling": {"temperature": -1}}))
    out = snakemake("-n", "--configfile", config, "-d", tmp_path, env=cli_env)
    assert out.returncode != 0
    assert "cgflow: bad config: sampling.temperature: -1 is not allowed; it must be > 0" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()


def test_jobs_find_cgflow_without_an_activated_environment(tmp_path):
    """`.venv/bin/snakemake` run with a PATH that does not name the venv (as after `make install`,
    without `source .venv/bin/activate`): its jobs still run the venv's `cgflow`."""
    import os

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                 if p and not (Path(p) / "cgflow").exists())}
    out = snakemake("--configfile", config, "-d", tmp_path, "--cores", "1",
                    f"results/{TINY['campaign']}/reference.csv", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "results" / TINY["campaign"] / "config.yaml").read_text())["seed"] == TINY["seed"]
    reference = pd.read_csv(tmp_path / "results" / TINY["campaign"] / "reference.csv")
    assert len(reference) == TINY["analysis"]["bins"] and reference.F_kJmol.min() == 0.0
