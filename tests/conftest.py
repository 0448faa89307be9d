"""Shared fixtures: campaigns built from small config dicts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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
