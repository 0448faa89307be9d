"""The ``cgflow`` command: one subcommand per workflow action, each reading and writing files.

Every subcommand takes the resolved campaign config (``results/<campaign>/config.yaml``,
written by the workflow's first rule) so a job depends on nothing but its input files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _campaign(path, section: str | None = None):
    """The campaign of the config file ``path``; ``section``: the one it must have (cg, ccg)."""
    from cgflow.config import load_config
    from cgflow.io import InputError

    campaign = load_config(Path(path))
    if section is not None and getattr(campaign, section) is None:
        raise InputError(f"{path} has no {section}: section, which this command runs")
    return campaign


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; it must be an integer >= {minimum}")
        return value
    return parse


def cmd_validate(args) -> None:
    import yaml

    campaign = _campaign(args.config)
    if args.results_dir:
        print(f"results/{campaign.name}")
    else:
        print(yaml.safe_dump(campaign.resolved, sort_keys=False), end="")


def cmd_sample(args) -> None:
    from cgflow.sampling.round import run

    run(_campaign(args.config), args.round, Path(args.out_dir),
        bias_path=Path(args.bias) if args.bias else None,
        starts_path=Path(args.starts) if args.starts else None, steps=args.steps, hills=True)


def _optional_paths(values):
    return [None if v == "none" else Path(v) for v in values]


def cmd_reweight(args) -> None:
    from cgflow.analysis.reweight import write_weights

    write_weights(_campaign(args.config), [Path(p) for p in args.samples], _optional_paths(args.biases), Path(args.out),
                  Path(args.previous_weights) if args.previous_weights else None)


def cmd_train(args) -> None:
    from cgflow.training.campaign import train_round

    train_round(_campaign(args.config), args.round, [Path(p) for p in args.samples], Path(args.weights),
                Path(args.out), Path(args.history))


def cmd_guide(args) -> None:
    from cgflow.guidance.campaign import guide_round

    guide_round(_campaign(args.config), args.round, Path(args.model), [Path(p) for p in args.samples],
                Path(args.weights), Path(args.bias), Path(args.starts), Path(args.report))


def cmd_peer(args) -> None:
    from cgflow.sampling.metadynamics import cli_peer

    cli_peer(args)


def cmd_convergence(args) -> None:
    from cgflow.analysis.convergence import cli_convergence

    cli_convergence(args)


def cmd_reference(args) -> None:
    from cgflow.analysis.campaign import write_reference

    write_reference(_campaign(args.config), Path(args.out))


def cmd_fes(args) -> None:
    from cgflow.analysis.report import write_fes

    paths = lambda values: [Path(p) for p in values or []]  # noqa: E731
    write_fes(_campaign(args.config), paths(args.samples), paths(args.weights), Path(args.model),
              paths(args.train_reports), paths(args.guide_reports),
              Path(args.reference) if args.reference else None,
              Path(args.convergence) if args.convergence else None, Path(args.out), Path(args.summary))


def cmd_plot(args) -> None:
    from cgflow.analysis.report import write_plots

    write_plots(_campaign(args.config), Path(args.fes), [Path(p) for p in args.samples], Path(args.out_dir))


def cmd_cg_sample(args) -> None:
    from cgflow.training.bead_campaign import write_fg_mapped

    rounds = None
    if args.forces:
        if not (args.samples and args.weights) or len(args.samples) != len(args.forces):
            raise SystemExit("cgflow cg-sample: --forces needs --samples of the same rounds and --weights")
        rounds = ([Path(p) for p in args.samples], [Path(p) for p in args.forces], Path(args.weights))
    write_fg_mapped(_campaign(args.config, "cg"), Path(args.out), rounds)


def cmd_cg_train(args) -> None:
    from cgflow.training.bead_campaign import write_objective

    write_objective(_campaign(args.config, "cg"), args.objective, Path(args.fg), Path(args.out_dir))


def cmd_reconstruct(args) -> None:
    from cgflow.reconstruction.campaign import write_flow

    write_flow(_campaign(args.config, "ccg"), Path(args.out_dir), [Path(p) for p in args.samples or []])


def cmd_ccg_fes(args) -> None:
    from cgflow.reconstruction.campaign import write_ccg_fes

    flow = Path(args.flow)
    write_ccg_fes(_campaign(args.config, "ccg"), flow, Path(args.flow_json) if args.flow_json else flow.with_suffix(".json"),
                  Path(args.out_dir), Path(args.reference) if args.reference else None)


def cmd_ccg_compare(args) -> None:
    from cgflow.reconstruction.compare import write_comparison

    write_comparison(_campaign(args.config, "ccg"), Path(args.ccg_fes), Path(args.ccg_summary), Path(args.fes),
                     Path(args.summary), Path(args.out_dir))


def cmd_install_profile(args) -> None:
    from cgflow.profiles import ProfileError, install_profile

    try:
        target, written = install_profile(args.force)
    except ProfileError as exc:
        raise SystemExit(f"cgflow install-profile: {exc}") from None
    print(f"{'installed' if written else 'already installed, unchanged:'} {target}\n"
          "run campaigns with `snakemake --profile slurm --configfile my.yaml`; put your partition and account "
          "under default-resources there (README: Running on a cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a config file and print it with every default filled in")
    p.add_argument("config")
    p.add_argument("--results-dir", action="store_true", help="print only the campaign's results folder")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("install-profile", help="copy profiles/slurm to Snakemake's user config folder, so that "
                       "`snakemake --profile slurm` finds it from anywhere")
    p.add_argument("--force", action="store_true", help="replace a copy that differs from the shipped profile")
    p.set_defaults(func=cmd_install_profile)

    p = sub.add_parser("sample", help="run one round of FG sampling (under mpiexec/srun or alone)")
    p.add_argument("--config", required=True, help="resolved campaign config")
    p.add_argument("--round", type=_count(0), required=True)
    p.add_argument("--out-dir", required=True, help="round folder; samples.parquet (and traj/) go here")
    p.add_argument("--bias", help="bias.npz to apply (default: none)")
    p.add_argument("--starts", help="starts.npz with walker start positions (default: the system's start)")
    p.add_argument("--steps", type=_count(1), help="steps per walker (default: sampling.steps)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reweight", help="unbiased weights of all frames of rounds 0..k (guidance.estimator: TRAM or MBAR; "
                                          "one state per round's bias)")
    p.add_argument("--config", required=True)
    p.add_argument("--samples", nargs="+", required=True, help="samples.parquet of rounds 0..k, in order")
    p.add_argument("--biases", nargs="+", required=True, help="the bias.npz each round sampled, or none")
    p.add_argument("--previous-weights", help="round k-1's weights.parquet, whose levelled cells this round remembers "
                                              "(guidance.level_memory)")
    p.add_argument("--out", required=True, help="weights.parquet")
    p.set_defaults(func=cmd_reweight)

    p = sub.add_parser("train", help="fit round k's CG model ensemble to the reweighted FG samples")
    p.add_argument("--config", required=True)
    p.add_argument("--round", type=_count(0), required=True)
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="cg.pt")
    p.add_argument("--history", required=True, help="training curve and metadata (JSON)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("guide", help="the bias and walker starts of round k+1 from round k's CG model")
    p.add_argument("--config", required=True)
    p.add_argument("--round", type=_count(0), required=True)
    p.add_argument("--model", required=True, help="round k's cg.pt")
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--bias", required=True, help="bias.npz out")
    p.add_argument("--starts", required=True, help="starts.npz out")
    p.add_argument("--report", required=True, help="guide.json out (diagnostics)")
    p.set_defaults(func=cmd_guide)

    p = sub.add_parser("peer", help="run a peer method (unbiased MD, metadynamics) with cgflow's FG step budget")
    p.add_argument("--config", required=True)
    p.add_argument("--method", required=True, choices=["unbiased", "metadynamics"])
    p.add_argument("--out-dir", required=True, help="peers/<method>/; samples.parquet (and snapshots) go here")
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("convergence", help="FES error vs FG steps for cgflow's rounds and the peers")
    p.add_argument("--config", required=True)
    p.add_argument("--samples", nargs="+", required=True, help="samples.parquet of rounds 0..N")
    p.add_argument("--weights", nargs="+", help="weights.parquet of rounds 0..N: the curve's points at the rounds' "
                   "ends (refitted from the samples where not given)")
    p.add_argument("--peer", nargs="+", action="extend", metavar="NAME=DIR", help="a peer's output folder")
    p.add_argument("--reference", required=True)
    p.add_argument("--out", required=True, help="convergence.csv")
    p.add_argument("--plot", required=True, help="convergence.png")
    p.add_argument("--summary-json", required=True, help="convergence.json (steps to the target per method)")
    p.set_defaults(func=cmd_convergence)

    p = sub.add_parser("reference", help="write the reference FES (exact quadrature for toys, the shipped/cached "
                       "long metadynamics FES for metadynamics_long, or the given file)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("fes", help="free-energy surface with error bars from all rounds' samples")
    p.add_argument("--config", required=True)
    p.add_argument("--samples", nargs="+", required=True, help="samples.parquet of rounds 0..N")
    p.add_argument("--weights", nargs="+", required=True, help="weights.parquet of rounds 0..N")
    p.add_argument("--model", required=True, help="the last round's cg.pt")
    p.add_argument("--train-reports", nargs="*", help="train.json of rounds 0..N")
    p.add_argument("--guide-reports", nargs="*", help="guide.json of rounds 0..N-1")
    p.add_argument("--reference")
    p.add_argument("--convergence", help="convergence.json")
    p.add_argument("--out", required=True, help="fes.csv")
    p.add_argument("--summary", required=True, help="summary.json")
    p.set_defaults(func=cmd_fes)

    p = sub.add_parser("plot", help="plots of the FES, the CV histogram and walker traces")
    p.add_argument("--config", required=True)
    p.add_argument("--fes", required=True)
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("cg-sample", help="mapped bead positions and forces for the cg stage (own FG run or the rounds)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="fg_mapped.npz")
    p.add_argument("--samples", nargs="*", help="samples.parquet of rounds 0..N (cg.fg_data: rounds)")
    p.add_argument("--forces", nargs="*", help="forces.npz of rounds 0..N, in the same order")
    p.add_argument("--weights", help="the last round's weights.parquet (unbiased weights of every frame)")
    p.set_defaults(func=cmd_cg_sample)

    p = sub.add_parser("cg-train", help="train a bead CG potential with one objective, run CG MD, score its FES")
    p.add_argument("--config", required=True)
    p.add_argument("--objective", required=True, choices=["fm", "re", "difftre", "fm+re"])
    p.add_argument("--fg", required=True, help="fg_mapped.npz from cg-sample")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_cg_train)

    p = sub.add_parser("reconstruct", help="train the ccg reconstruction flow q(y|s) by reverse KL on the FG energy")
    p.add_argument("--config", required=True)
    p.add_argument("--out-dir", required=True, help="ccg/; flow.pt, flow.json and train.json go here")
    p.add_argument("--samples", nargs="*", help="samples.parquet of the rounds (for samples conditioning or the NLL)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("ccg-fes", help="free energy at every grid point from the flow alone (importance sampling, ESS)")
    p.add_argument("--config", required=True)
    p.add_argument("--flow", required=True, help="flow.pt from cgflow reconstruct")
    p.add_argument("--flow-json", help="its flow.json (default: beside flow.pt)")
    p.add_argument("--out-dir", required=True, help="ccg/; ccg_fes.csv, diagnostics.csv, ccg_fes.png, summary.json "
                   "(and backmapped.dcd + backmapped.pdb for alanine dipeptide)")
    p.add_argument("--reference", help="the campaign's reference.csv to score against (molecules; toys use quadrature)")
    p.set_defaults(func=cmd_ccg_fes)

    p = sub.add_parser("ccg-compare", help="the CCG free energy beside the rounds' FES and the reference")
    p.add_argument("--config", required=True)
    p.add_argument("--ccg-fes", required=True, help="ccg_fes.csv from cgflow ccg-fes")
    p.add_argument("--ccg-summary", required=True, help="its summary.json (energy evaluations)")
    p.add_argument("--fes", required=True, help="the campaign's fes.csv")
    p.add_argument("--summary", required=True, help="the campaign's summary.json (FG steps)")
    p.add_argument("--out-dir", required=True, help="ccg/; comparison.csv, comparison.json, comparison.png")
    p.set_defaults(func=cmd_ccg_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from cgflow.config import ConfigError
    from cgflow.io import InputError

    try:
        args.func(args)
    except ConfigError as exc:
        print(f"cgflow: bad config: {exc}", file=sys.stderr)
        return 2
    except (InputError, FileNotFoundError, IsADirectoryError) as exc:
        if args.verbose:
            raise
        print(f"cgflow {args.command}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
