"""Config validation (once, before any job) and the campaign's file layout."""

import json
import sys
from pathlib import Path

from cgflow.config import ConfigError, load_config

try:
    CAMPAIGN = load_config(config, base_dir=Path(workflow.basedir))
except ConfigError as exc:
    sys.exit(f"cgflow: bad config: {exc}")

RESULTS = f"results/{CAMPAIGN.name}"
CONFIG_FILE = f"{RESULTS}/config.yaml"
ROUNDS = [0]
ENV = "../../envs/cgflow.yaml"


def round_dir(k):
    return f"{RESULTS}/round-{k:02d}"


def has_reference():
    return CAMPAIGN.analysis.reference != "none"


def campaign_targets():
    return [
        f"{RESULTS}/fes.csv",
        f"{RESULTS}/summary.json",
        *(f"{RESULTS}/plots/{name}.png" for name in ("fes", "cv_histogram", "walker_traces")),
    ]


def sample_outputs():
    out = {"samples": f"{RESULTS}/round-{{round}}/samples.parquet"}
    if not CAMPAIGN.system.is_toy:
        out["traj"] = directory(f"{RESULTS}/round-{{round}}/traj")
    return out
