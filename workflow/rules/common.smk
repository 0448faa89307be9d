"""Config validation (once, before any job) and the campaign's file layout."""

import json
import sys
from pathlib import Path

from cgflow.config import ConfigError, load_config, read_config_file
from cgflow.jobs import mpi_launch, run_jobs_in_this_environment

# `.venv/bin/snakemake` works without activating the venv: jobs find its `cgflow` and `mpiexec`
run_jobs_in_this_environment(workflow.basedir)

try:
    for path in workflow.configfiles:  # Snakemake's own reading keeps the last of a key given twice
        read_config_file(path)
    CAMPAIGN = load_config(config)
except ConfigError as exc:
    sys.exit(f"cgflow: bad config: {exc}")

RESULTS = f"results/{CAMPAIGN.name}"
CONFIG_FILE = f"{RESULTS}/config.yaml"


def write_campaign_config():
    """``CONFIG_FILE``, the validated config with every default, which every job reads: written
    here, when it differs, and not by a rule. Below a rule that rewrites it, Snakemake 9 would
    take the sampling, training and guidance jobs as settled by that rule's rerun and skip their
    ``config_hash`` check, so a sampling change would first be analysed on the old samples."""
    import yaml

    from cgflow.io import write_text

    text = yaml.safe_dump(CAMPAIGN.resolved, sort_keys=False)
    path = Path(CONFIG_FILE)
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)


write_campaign_config()
ROUNDS = CAMPAIGN.rounds
LAST = ROUNDS[-1]
ENV = "../../envs/cgflow.yaml"


def round_dir(k):
    return f"{RESULTS}/round-{k:02d}"


def applied_bias(k):
    """The bias round k samples under (None: unbiased)."""
    if k == 0:
        return CAMPAIGN.guidance.initial_bias
    return f"{round_dir(k - 1)}/bias.npz"


def round_hash(wildcards):
    """Hash of the config a round's jobs depend on: rules take the config file as ancient() and
    rerun on this, so analysis-only edits keep every round and adding rounds keeps the earlier ones."""
    g = CAMPAIGN.guidance
    plain = int(wildcards.round) == 0 and not g.initial_bias and not g.hills["height"]
    return CAMPAIGN.stage_hash("sampling" if plain else "guidance")


def round_inputs(wildcards):
    """Samples and applied biases of rounds 0..k, for reweighting, training and guidance."""
    k = int(wildcards.round)
    return {
        "samples": [f"{round_dir(j)}/samples.parquet" for j in range(k + 1)],
        "biases": [b for b in map(applied_bias, range(k + 1)) if b],
    }


def previous_weights(wildcards):
    """Round k-1's weights, whose levelled cells round k's remembers (guidance.level_memory)."""
    k = int(wildcards.round)
    return {"previous": f"{round_dir(k - 1)}/weights.parquet"} if k > 0 and CAMPAIGN.guidance.level_memory else {}


def previous_arg(wildcards, input):
    """The reweight job's option naming round k-1's weights, where it has them as input."""
    return f"--previous-weights {input.previous}" if "previous" in input.keys() else ""


def bias_args(wildcards):
    k = int(wildcards.round)
    return " ".join(applied_bias(j) or "none" for j in range(k + 1))


def sample_inputs(wildcards):
    k = int(wildcards.round)
    out = {"config": ancient(CONFIG_FILE)}
    if applied_bias(k):
        out["bias"] = applied_bias(k)
    if k > 0:
        out["starts"] = f"{round_dir(k - 1)}/starts.npz"
    return out


def mpi_launcher(wildcards, resources):
    """The sampling job's MPI launcher prefix (:func:`cgflow.jobs.mpi_launch`)."""
    return mpi_launch("sample", getattr(resources, "mpi", None), getattr(resources, "tasks", 1))


def sample_args(wildcards, input):
    args = []
    if "bias" in input.keys():
        args.append(f"--bias {input.bias}")
    if "starts" in input.keys():
        args.append(f"--starts {input.starts}")
    return " ".join(args)


def has_reference():
    return CAMPAIGN.analysis.reference != "none"


def peer_outputs():
    return [f"{RESULTS}/peers/{m}/samples.parquet" for m in CAMPAIGN.analysis.peers] + (
        [f"{RESULTS}/peers/metadynamics/fes_snapshots.npz"] if "metadynamics" in CAMPAIGN.analysis.peers else []
    )


def cg_targets():
    """The cg stage's final files, one folder per objective (empty without a cg section)."""
    if CAMPAIGN.cg is None:
        return []
    return [f"{RESULTS}/cg/{obj}/{name}" for obj in CAMPAIGN.cg.objectives
            for name in ("summary.json", "fes.csv", "model.pt", "train.json", "cg_md.dcd")]


def cg_fg_inputs(wildcards):
    """The cg stage's FG data: its own run needs the config only; ``cg.fg_data: rounds`` reads every
    round's samples and forces and the last round's weights (all rounds reweighted together)."""
    out = {"config": ancient(CONFIG_FILE)}
    if CAMPAIGN.records_forces:
        out["samples"] = [f"{round_dir(k)}/samples.parquet" for k in ROUNDS]
        out["forces"] = [f"{round_dir(k)}/forces.npz" for k in ROUNDS]
        out["weights"] = f"{round_dir(LAST)}/weights.parquet"
    return out


def cg_fg_args(wildcards, input):
    if "forces" not in input.keys():
        return ""
    return f"--samples {input.samples} --forces {input.forces} --weights {input.weights}"


def ccg_targets():
    """The ccg stage's final files (empty without a ccg section); workflow/rules/ccg.smk."""
    if CAMPAIGN.ccg is None:
        return []
    return [f"{RESULTS}/ccg/{name}" for name in ("flow.pt", "ccg_fes.csv", "diagnostics.csv", "ccg_fes.png", "summary.json",
                                                 "comparison.csv", "comparison.json", "comparison.png")] + list(
        ccg_backmapped().values())


def ccg_backmapped():
    """ccg_fes's all-atom outputs: backmapped.dcd + .pdb for a molecule, none for a toy."""
    if CAMPAIGN.ccg is None or CAMPAIGN.system.is_toy:
        return {}
    return {"dcd": f"{RESULTS}/ccg/backmapped.dcd", "pdb": f"{RESULTS}/ccg/backmapped.pdb"}


def ccg_reference():
    """The reference ccg_fes scores a molecule against (toys: pointwise quadrature, no file)."""
    if CAMPAIGN.ccg is None or CAMPAIGN.system.is_toy or not has_reference():
        return []
    return f"{RESULTS}/reference.csv"


def ccg_samples():
    """Every round's samples when the flow trains on FG frames (samples conditioning or NLL), else none."""
    if CAMPAIGN.ccg is None or not CAMPAIGN.ccg.needs_fg_samples:
        return []
    return [f"{round_dir(k)}/samples.parquet" for k in ROUNDS]


def campaign_targets():
    return [
        f"{RESULTS}/fes.csv",
        f"{RESULTS}/summary.json",
        *(f"{RESULTS}/plots/{name}.png" for name in ("fes", "cv_histogram", "walker_traces")),
        *([f"{RESULTS}/plots/convergence.png"] if has_reference() else []),
        *cg_targets(),  # workflow/rules/cg.smk; empty without a cg: section
        *ccg_targets(),  # workflow/rules/ccg.smk; empty without a ccg: section
    ]


def sample_outputs():
    out = {"samples": f"{RESULTS}/round-{{round}}/samples.parquet"}
    if not CAMPAIGN.system.is_toy:
        out["traj"] = directory(f"{RESULTS}/round-{{round}}/traj")
    if CAMPAIGN.records_forces:
        out["forces"] = f"{RESULTS}/round-{{round}}/forces.npz"
    if CAMPAIGN.guidance.hills["height"]:
        out["hills"] = f"{RESULTS}/round-{{round}}/hills.npz"
    return out
