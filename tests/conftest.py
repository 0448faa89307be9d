"""Shared fixtures: campaigns built from small config dicts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Killed(Exception):
    """Raised by a test's patch where a real job would be killed (SIGKILL) in-process."""


def kill_after_chunks(cmd: list[str], work: Path, n_chunks: int, env: dict | None = None) -> int:
    """Start ``cmd`` and SIGKILL it once ``work`` holds ``n_chunks`` checkpoint chunks (or after
    60 s, or when it ends first); return how many chunks it left, as a job killed mid-run does."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list(work.rglob("chunk-*.npz"))) < n_chunks and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(work.rglob("chunk-*.npz")))


@pytest.fixture
def campaign():
    """Build a validated Campaign from keyword overrides of a tiny toy config."""
    from cgflow.config import load_config

    def make(system=None, sampling=None, analysis=None, name="test", seed=1, guidance=None):
        cfg = {"campaign": name, "seed": seed, "system": system or {"type": "toy", "potential": "double_well"}}
        for key, value in (("sampling", sampling), ("analysis", analysis), ("guidance", guidance)):
            if value:
                cfg[key] = value
        return load_config(cfg)

    return make


@pytest.fixture
def cli_env():
    """Environment for subprocesses: this interpreter's bin first on PATH (cgflow, snakemake)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def bench_rounds():
    """tests/benchmarks/bench_rounds.py as a module (benchmarks are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_rounds", ROOT / "tests" / "benchmarks" / "bench_rounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
