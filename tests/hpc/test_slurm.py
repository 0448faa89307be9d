"""The SLURM profile against a real cluster (``.ci/slurm_up.sh``: slurmctld, slurmd, slurmdbd on
localhost): a two-round campaign submitted with ``--profile profiles/slurm`` goes through sbatch
and gives the very samples and free energies a local run with the same seed and MPI rank layout
gives; a sampling job killed with scancel is retried and resumes from its checkpoint.

Skipped where no cluster answers, unless CGFLOW_REQUIRE_SLURM=1 (set by .ci/run), which turns a
missing cluster into a failure."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from cgflow.io import read_provenance
from tests.conftest import ROOT
from tests.workflow.test_workflow import snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.workflow]

SITE = ROOT / "tests" / "hpc" / "site"
MPI = ["--set-resources", "sample:mpi=mpiexec", "sample:tasks=2"]

TWO_ROUNDS = {
    "campaign": "slurm",
    "seed": 5,
    "system": {"type": "toy", "potential": "double_well"},
    "sampling": {"walkers": 16, "steps": 8000, "report_interval": 100, "platform": "Reference"},
    "guidance": {"rounds": 1, "train_steps": 200},
    "analysis": {"bins": 30, "bootstrap": 20},
}


def _cluster_state() -> str:
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else out.stderr.strip()


@pytest.fixture(scope="module")
def cluster():
    state = _cluster_state()
    if state not in ("idle", "mixed", "allocated"):
        message = f"no SLURM cluster answers ({state}); start one with `bash .ci/slurm_up.sh`"
        if os.environ.get("CGFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def on_slurm(config, where, env, *extra):
    return snakemake("--profile", ROOT / "profiles" / "slurm", "--workflow-profile", SITE,
                     "--configfile", config, "-d", where, *extra, env=env)


def submitted(log: str) -> tuple[str, dict[int, str]]:
    """The run's SLURM name and {slurm job id: rule} of every job it submitted; a group job
    is named by its log folder, `group_<group>_<its rules>`."""
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = {int(m.group(1)): m.group(2).removeprefix("rule_") for m in re.finditer(
        r"submitted with SLURM jobid (\d+) \(log: \S*/((?:rule|group)_\w+)/", log)}
    return run_id, jobs


def accounted(run_id: str) -> dict[int, str]:
    """{job id: state} of the run's jobs, from the accounting database (sacct)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", run_id, "-o", "JobID,State"],
                         capture_output=True, text=True, check=True).stdout
    return {int(j): s for j, s in (line.split("|", 1) for line in out.splitlines() if line)}


def test_two_round_campaign_through_slurm_equals_the_local_run(cluster, tmp_path, cli_env):
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(TWO_ROUNDS))
    local = snakemake("--configfile", config, "-d", tmp_path / "local", "--cores", "2", *MPI, env=cli_env)
    assert local.returncode == 0, local.stderr[-3000:]
    slurm = on_slurm(config, tmp_path / "slurm", cli_env, *MPI)
    assert slurm.returncode == 0, slurm.stderr[-3000:]

    run_id, jobs = submitted(slurm.stderr)
    # reweight, train and guide of a round are one sbatch job (the profile's groups); the last
    # round has no guide
    assert sorted(jobs.values()).count("sample") == 2
    assert {"fes", "group_round00_guide_reweight_train", "group_round01_reweight_train"} <= set(jobs.values())
    assert not {"reweight", "train", "guide"} & set(jobs.values())
    states = accounted(run_id)
    assert set(states) == set(jobs) and set(states.values()) == {"COMPLETED"}, states

    for name in ("round-00/samples.parquet", "round-01/samples.parquet", "round-01/weights.parquet",
                 "fes.csv", "convergence.csv"):
        a, b = (tmp_path / run / "results" / "slurm" / name for run in ("local", "slurm"))
        read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
        pd.testing.assert_frame_equal(read(b), read(a), check_exact=True)
    with np.load(tmp_path / "local" / "results" / "slurm" / "round-00" / "bias.npz") as a, \
            np.load(tmp_path / "slurm" / "results" / "slurm" / "round-00" / "bias.npz") as b:
        assert set(a.files) == set(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert read_provenance(tmp_path / "slurm" / "results" / "slurm" / "round-01" / "samples.parquet")["ranks"] == 2


def stop(proc, where, env) -> None:
    """What a user does to a Snakemake left waiting on a cancelled job: Ctrl-C, and once more if
    it is still shutting down; as a last resort kill it and release its lock (--unlock)."""
    for sig, wait in ((None, 15), (signal.SIGINT, 90), (signal.SIGINT, 60)):
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()
    snakemake("--unlock", "-d", where, "--configfile", where.parent / "campaign.yaml", env=env)


ONE_LONG_ROUND = {
    "campaign": "killed",
    "seed": 7,
    "system": {"type": "toy", "potential": "double_well"},
    "sampling": {"walkers": 16, "steps": 400000, "report_interval": 200, "checkpoint_interval": 20000,
                 "platform": "Reference"},
    "analysis": {"bins": 30, "bootstrap": 20},
}


def test_scancelled_sampling_job_resumes_from_its_checkpoint_on_rerun(cluster, tmp_path, cli_env):
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(ONE_LONG_ROUND))
    where = tmp_path / "slurm"
    cmd = [shutil.which("snakemake", path=cli_env["PATH"]), "-s", str(ROOT / "Snakefile"),
           "--profile", str(ROOT / "profiles" / "slurm"), "--workflow-profile", str(SITE),
           "--configfile", str(config), "-d", str(where), "--until", "sample"]
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env, stdout=log, stderr=subprocess.STDOUT)
    chunks = where / "results" / "killed" / "round-00" / ".work"
    deadline = time.time() + 300
    while len(list(chunks.rglob("chunk-*.npz"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    run_id, jobs = submitted(first_log.read_text())
    sample_job = next((j for j, rule in jobs.items() if rule == "sample"), None)
    assert sample_job is not None and proc.poll() is None, first_log.read_text()[-3000:]
    subprocess.run(["scancel", str(sample_job)], check=True)
    while not accounted(run_id).get(sample_job, "").startswith("CANCELLED") and time.time() < deadline:
        time.sleep(0.2)
    n_killed = len(list(chunks.rglob("chunk-*.npz")))
    assert 2 <= n_killed < 20, "scancel must hit mid-run for this test to mean anything"
    assert not (where / "results" / "killed" / "round-00" / "samples.parquet").exists()
    # sacct says "CANCELLED by <uid>", which the plugin (2.8.0) does not take for a failure, so
    # Snakemake would wait on: the user stops it (Ctrl-C) and reruns, as README.md says.
    stop(proc, where, cli_env)

    rerun = on_slurm(config, where, cli_env, "--until", "sample")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert accounted(submitted(rerun.stderr)[0]) and "sample" in submitted(rerun.stderr)[1].values()
    sample_log = (where / "results" / "killed" / "logs" / "sample-round-00.log").read_text()
    assert "resuming from step" in sample_log, sample_log[-2000:]

    local = snakemake("--configfile", config, "-d", tmp_path / "local", "--cores", "1", "--until", "sample",
                      env=cli_env)
    assert local.returncode == 0, local.stderr[-3000:]
    pd.testing.assert_frame_equal(
        pd.read_parquet(where / "results" / "killed" / "round-00" / "samples.parquet"),
        pd.read_parquet(tmp_path / "local" / "results" / "killed" / "round-00" / "samples.parquet"),
        check_exact=True)
