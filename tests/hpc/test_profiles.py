"""The shipped profiles: the SLURM profile parses, names only rules that exist, and plans the
default campaign with one group job per round (dry run; the jobs themselves need a cluster)."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import BIN, ROOT


def rule_names() -> set[str]:
    return {m.group(1) for f in (ROOT / "workflow" / "rules").glob("*.smk")
            for m in re.finditer(r"^rule (\w+):", f.read_text(), re.M)}


def test_slurm_profile_resources_name_real_rules_and_no_site():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert set(profile["set-resources"]) <= rule_names()
    text = (ROOT / "profiles" / "slurm" / "config.yaml").read_text()
    assert "slurm_partition:" not in text and "slurm_account:" not in text  # left to the site


def test_slurm_profile_plans_the_default_campaign(tmp_path, cli_env):
    out = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--profile",
                          str(ROOT / "profiles" / "slurm"), "--configfile", str(ROOT / "config" / "config.yaml"),
                          "-d", str(tmp_path), "-n"],
                         capture_output=True, text=True, env=cli_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sample" in out.stdout and "train" in out.stdout
    # one sbatch job per round for its reweight, train and guide (the profile's groups)
    rounds = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["guidance"]["rounds"]
    assert sorted(re.findall(r"Group job (round\d\d)", out.stdout)) == [f"round{k:02d}" for k in range(rounds + 1)]
