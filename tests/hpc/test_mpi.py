"""MPI walkers: ``cgflow sample`` under ``mpiexec -n 2`` covers every walker once, repeats bit
for bit, agrees with the serial run within error bars, and the Snakemake rule launches it from
``resources.mpi`` / ``resources.tasks``."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from cgflow.analysis.campaign import cv_edges
from cgflow.analysis.fes import compare_to_reference, histogram_fes
from cgflow.config import load_config
from cgflow.io import read_provenance
from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.skipif(shutil.which("mpiexec", path=str(BIN)) is None,
                                reason="no mpiexec in this environment (pip install mpich)")

CONFIG = {
    "campaign": "mpi", "seed": 4,
    "system": {"type": "toy", "potential": "double_well"},
    "sampling": {"walkers": 16, "steps": 20000, "report_interval": 100, "platform": "Reference"},
    "analysis": {"bins": 30, "bootstrap": 100},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    where = tmp_path_factory.mktemp("mpi")
    config = where / "config.yaml"
    config.write_text(yaml.safe_dump(load_config(CONFIG).resolved))
    env_path = f"{BIN}:{__import__('os').environ.get('PATH', '')}"
    out = {}
    for name, launch in (("mpi-a", ["mpiexec", "-n", "2"]), ("mpi-b", ["mpiexec", "-n", "2"]),
                         ("one-rank", ["mpiexec", "-n", "1"]), ("serial", [])):
        cmd = [*launch, str(BIN / "cgflow"), "sample", "--config", str(config), "--round", "0",
               "--out-dir", str(where / name)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": env_path, "HOME": str(where)})
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = where / name / "samples.parquet"
    return out


def test_two_ranks_cover_every_walker_once(runs):
    df = pd.read_parquet(runs["mpi-a"])
    assert read_provenance(runs["mpi-a"])["ranks"] == 2
    assert sorted(df.walker.unique()) == list(range(16))
    assert (df.groupby("walker").size() == 20000 // 100).all()
    assert not df.duplicated(["walker", "step"]).any()
    # every walker its own random stream: no rank repeats another's walkers
    assert len({df[df.walker == w].x.to_numpy().tobytes() for w in range(16)}) == 16


def test_two_ranks_repeat_bit_for_bit(runs):
    pd.testing.assert_frame_equal(pd.read_parquet(runs["mpi-a"]), pd.read_parquet(runs["mpi-b"]))


def test_one_rank_under_mpiexec_is_the_serial_run(runs):
    assert read_provenance(runs["one-rank"])["ranks"] == 1
    pd.testing.assert_frame_equal(pd.read_parquet(runs["one-rank"]), pd.read_parquet(runs["serial"]))


def test_two_ranks_agree_with_serial_within_error_bars(runs):
    campaign = load_config(CONFIG)
    kT, edges = campaign.sampling.kT, cv_edges(campaign)
    exact = campaign.system.build().reference_fes(edges, campaign.sampling.temperature)
    fes = {}
    for name in ("mpi-a", "serial"):
        df = pd.read_parquet(runs[name])
        fes[name] = histogram_fes(df[["x"]].to_numpy(), edges, kT, blocks=df.walker.to_numpy(),
                                  n_bootstrap=100, seed=1)
        assert compare_to_reference(fes[name], exact, kT, 3.0)["rmse_kT"] < 0.35
    a, s = fes["mpi-a"], fes["serial"]
    low = np.isfinite(a.F) & np.isfinite(s.F) & (exact - np.nanmin(exact) < 3 * kT)
    z = (a.F - s.F)[low] / np.hypot(a.F_err, s.F_err)[low]
    assert np.mean(np.abs(z - np.mean(z)) < 3) > 0.9  # same ensemble: differences are noise


def test_sample_rule_launches_under_mpi_resources(tmp_path, cli_env):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--configfile", str(config), "-d", str(tmp_path),
           "--cores", "2", "-p", "-n"]
    mpi = ["--set-resources", "sample:mpi=mpiexec", "sample:tasks=2"]
    dry = subprocess.run(cmd + mpi, capture_output=True, text=True, env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert "mpiexec -n 2 cgflow sample" in dry.stdout
    plain = subprocess.run(cmd, capture_output=True, text=True, env=cli_env)
    assert "mpiexec" not in plain.stdout and "cgflow sample" in plain.stdout
    assert "runs one process" not in plain.stderr
    # half of the pair runs one process on resources booked for two: said once, not per round
    config.write_text(yaml.safe_dump({**CONFIG, "guidance": {"rounds": 2}}))
    for half, missing in ((["sample:mpi=mpiexec"], "with tasks=1"), (["sample:tasks=2"], "tasks=2 without mpi")):
        dry = subprocess.run(cmd + ["--set-resources", *half], capture_output=True, text=True, env=cli_env)
        assert dry.returncode == 0, dry.stderr
        assert "mpiexec -n" not in dry.stdout and "cgflow sample" in dry.stdout
        assert dry.stderr.count("the job runs one process") == 1 and missing in dry.stderr, dry.stderr


def test_a_failing_rank_ends_every_rank(tmp_path):
    """Rank 1 fails while rank 0 waits in a collective: without MPI_Abort rank 0 would wait
    until the job's wall time."""
    script = tmp_path / "fail.py"
    script.write_text("from cgflow.sampling.mpi import aborting_all_on_error, world\n"
                      "comm, rank, size = world()\n"
                      "with aborting_all_on_error(comm):\n"
                      "    if rank == 1:\n"
                      "        raise RuntimeError('rank 1 fails')\n"
                      "    comm.barrier()\n")
    env = {"PATH": f"{BIN}:{__import__('os').environ.get('PATH', '')}", "HOME": str(tmp_path)}
    done = subprocess.run(["mpiexec", "-n", "2", str(BIN / "python"), str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode != 0 and "rank 1 fails" in done.stderr


def test_each_rank_takes_a_gpu_by_local_rank_and_cpu_threads_follow_pinning():
    from cgflow.sampling.platform import cpu_threads, gpu_device, local_rank, platform_properties

    assert local_rank({}) == 0
    assert local_rank({"SLURM_LOCALID": "3"}) == 3 and local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "2"}) == 2
    assert local_rank({"MPI_LOCALRANKID": "1"}) == 1
    # mpiexec inside a SLURM job: its ranks inherit the job step's SLURM_LOCALID
    assert local_rank({"SLURM_LOCALID": "0", "MPI_LOCALRANKID": "1"}) == 1
    four = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert [gpu_device({**four, "SLURM_LOCALID": str(r)}) for r in range(6)] == [0, 1, 2, 3, 0, 1]
    assert gpu_device({"CUDA_VISIBLE_DEVICES": "5", "SLURM_LOCALID": "3"}) == 0  # one GPU given: index 0
    assert platform_properties("CUDA", device_index=2) == {"DeviceIndex": "2"}
    assert platform_properties("CPU", device_index=2, threads=4) == {"Threads": "4"}
    assert cpu_threads(True) == 1 and cpu_threads(False) >= 1


def test_hills_are_shared_across_ranks(tmp_path):
    """Alanine dipeptide (one Context per walker, seeded per walker) with the hills layer: two
    ranks give the serial run bit for bit only if every rank deposits every walker's hills; so
    do three, one of them without a walker."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(load_config({
        "campaign": "mpi-hills", "seed": 2, "system": {"type": "alanine_dipeptide"},
        "sampling": {"walkers": 2, "steps": 3000, "report_interval": 250, "platform": "CPU"},
        "guidance": {"hills": {"height": 5.0, "interval": 750}}}).resolved))
    env = {"PATH": f"{BIN}:{__import__('os').environ.get('PATH', '')}", "HOME": str(tmp_path)}
    out = {}
    for name, launch in (("two-ranks", ["mpiexec", "-n", "2"]), ("three-ranks", ["mpiexec", "-n", "3"]),
                         ("serial", [])):
        cmd = [*launch, str(BIN / "cgflow"), "sample", "--config", str(config), "--round", "0",
               "--out-dir", str(tmp_path / name)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = pd.read_parquet(tmp_path / name / "samples.parquet")
    assert read_provenance(tmp_path / "two-ranks" / "samples.parquet")["ranks"] == 2
    pd.testing.assert_frame_equal(out["two-ranks"], out["serial"])
    pd.testing.assert_frame_equal(out["three-ranks"], out["serial"])
    with np.load(tmp_path / "two-ranks" / "hills.npz") as a, np.load(tmp_path / "serial" / "hills.npz") as s:
        assert len(a["hills"]) == 4 and a["hills"][-1].max() > 5.0  # both walkers' hills, 3 depositions
        np.testing.assert_array_equal(a["hills"], s["hills"])
