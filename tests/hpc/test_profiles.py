"""The shipped profiles: the SLURM profile parses, names only rules that exist, and plans the
default campaign with one group job per round (dry run; the jobs themselves need a cluster),
given by its path or by name once ``cgflow install-profile`` has put it where Snakemake looks."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import BIN, ROOT


def rule_body(name: str) -> str:
    for f in (ROOT / "workflow" / "rules").glob("*.smk"):
        m = re.search(rf"^rule {name}:\n(.*?)(?=^rule |\Z)", f.read_text(), re.M | re.S)
        if m:
            return m.group(0)
    raise AssertionError(f"no rule {name}")


def rule_names() -> set[str]:
    return {m.group(1) for f in (ROOT / "workflow" / "rules").glob("*.smk")
            for m in re.finditer(r"^rule (\w+):", f.read_text(), re.M)}


def test_slurm_profile_resources_name_real_rules_and_no_site():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert set(profile.get("set-resources") or {}) <= rule_names()
    # the long and large jobs carry their own runtime and memory, which a site's set-resources
    # or default-resources cannot drop
    for rule in ("sample", "peer_unbiased", "peer_metadynamics", "reweight", "train", "guide", "reference",
                 "cg_sample", "cg_train"):
        body = rule_body(rule)
        assert re.search(r"\n    resources:\n        runtime=\d+,\n        mem_mb=\d+,", body), rule
    text = (ROOT / "profiles" / "slurm" / "config.yaml").read_text()
    assert "slurm_partition:" not in text and "slurm_account:" not in text  # left to the site


def test_the_workflow_profile_changes_nothing_the_slurm_profile_sets():
    """profiles/default applies to every run from this checkout and overrides the same keys of
    ``--profile profiles/slurm``: an executor, jobs or resources there would turn a cluster run
    local or shrink its jobs without a word."""
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    slurm = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert not set(default) & {"executor", "jobs", "default-resources", "set-resources", "resources", "groups"}
    assert {k: default[k] for k in set(default) & set(slurm)} == {k: slurm[k] for k in set(default) & set(slurm)}


def _install(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cgflow"), "install-profile", *args], capture_output=True, text=True, env=env)


def test_install_profile_copies_it_once_and_keeps_a_sites_edits(tmp_path, cli_env):
    env = {**cli_env, "XDG_CONFIG_HOME": str(tmp_path)}
    installed = tmp_path / "snakemake" / "slurm" / "config.yaml"
    shipped = (ROOT / "profiles" / "slurm" / "config.yaml").read_text()
    first = _install(env)
    assert first.returncode == 0, first.stderr
    assert installed.read_text() == shipped
    assert "already installed" in _install(env).stdout

    edited = shipped.replace("default-resources:", "default-resources:\n  slurm_account: myproject")
    installed.write_text(edited)
    refused = _install(env)
    assert refused.returncode != 0 and "--force" in refused.stderr and str(installed) in refused.stderr
    assert installed.read_text() == edited
    forced = _install(env, "--force")
    assert forced.returncode == 0, forced.stderr
    assert installed.read_text() == shipped
    assert installed.with_name("config.yaml.bak").read_text() == edited


@pytest.mark.parametrize("by", ["path", "name"])
def test_slurm_profile_plans_the_default_campaign(by, tmp_path, cli_env):
    env = {**cli_env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    if by == "name":
        assert _install(env).returncode == 0
    profile = str(ROOT / "profiles" / "slurm") if by == "path" else "slurm"
    out = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--profile", profile,
                          "--configfile", str(ROOT / "config" / "config.yaml"), "-d", str(tmp_path), "-n"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sample" in out.stdout and "train" in out.stdout
    # one sbatch job per round for its reweight, train and guide (the profile's groups)
    rounds = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["guidance"]["rounds"]
    assert sorted(re.findall(r"Group job (round\d\d)", out.stdout)) == [f"round{k:02d}" for k in range(rounds + 1)]
