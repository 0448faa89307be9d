"""Cycle-coarse-graining benchmark on toys (``make bench-ccg``): accuracy, trust and cost.

For each toy (the 2-D double well, a "banana" whose y-mean and width follow x, the rotated
linear CV of config/examples/expression.yaml, and Müller-Brown) and each training length, a
flow is trained by reverse KL with the CV drawn uniformly over its range (no FG data), and the
free energy is estimated on a grid. Reported per run: the max |ΔF| and RMSE against pointwise
quadrature where F < 6 kT (trusted points only), the number of untrusted points, the ESS
fractions, wall times and energy evaluations. With ``--fg`` the 2-D double well is also
sampled by plain unbiased OpenMM MD with the same number of energy evaluations (walkers x
steps), scored the usual way (histogram FES against the bin-integrated exact PMF), to put the
cost beside the FG route. With ``--trust-study`` it also repeats the study behind the default
``ccg.estimate.min_ess_fraction`` (0.2): importance sampling of a 1-D Gaussian from Gaussian
proposals 0.1-1x as wide, M = 2000, 60 repeats each, and the worst error that each trust rule
lets through. One JSON: ``results/bench-ccg/bench_ccg.json``. ``--quick`` is a smoke-sized run.
Everything runs on one CPU thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TOYS = {
    "double_well_2d": ("25*(x^2-1)^2 + 10*(1+0.5*x^2)*y^2", ("x", "x"), {"x": (-2.0, 2.0), "y": (-2.0, 2.0)}),
    "banana": ("25*(x^2-1)^2 + 10*(1+x^2)*(y-0.5*x^2)^2", ("x", "x"), {"x": (-2.0, 2.0), "y": (-2.0, 3.0)}),
    "expression_rotated": ("5*((0.8*x-0.6*y)^2-1)^2 + 10*(0.6*x+0.8*y)^2", ("s", "0.8*x - 0.6*y"),
                           {"x": (-2.0, 2.0), "y": (-2.0, 2.0)}),
    "muller_brown": (None, ("x", "x"), None),
}


def run_ccg(name: str, steps: int, batch: int, samples: int, grid_points: int, kT: float, seed: int) -> dict:
    import torch

    from cgflow.reconstruction.energy import ToyEnergy, exact_pmf
    from cgflow.reconstruction.flow import ConditionalFlow
    from cgflow.reconstruction.free_energy import EstimateSettings, ccg_free_energy, compare_to_exact
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train
    from cgflow.systems.toy import BUILTINS, CV, ToySystem

    text, (cv_name, cv_expr), box = TOYS[name]
    if text is None:
        text, box = BUILTINS[name].energy, dict(BUILTINS[name].box)
    energy = ToyEnergy(ToySystem(text, (CV(cv_name, cv_expr),), box), kT)
    g = energy.geometry
    y_lo, y_hi = g.hidden_range()
    s_lo, s_hi = g.cv_range()
    torch.manual_seed(seed)
    flow = ConditionalFlow(g.n_hidden, g.n_cvs, y_loc=(y_lo + y_hi) / 2, y_scale=(y_hi - y_lo) / 4,
                           s_loc=(s_lo + s_hi) / 2, s_scale=(s_hi - s_lo) / np.sqrt(12))
    trained = train(flow, energy, Conditioning.uniform(s_lo, s_hi),
                    TrainSettings(steps=steps, batch=batch, log_interval=max(1, steps), seed=seed + 1), kT)
    edges = np.linspace(s_lo[0], s_hi[0], grid_points + 1)
    grid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    t0 = time.perf_counter()
    evals0 = energy.evaluations
    frame = ccg_free_energy(flow, energy, grid, kT, EstimateSettings(samples_per_point=samples, seed=seed + 2),
                            [cv_name])
    estimate_s = time.perf_counter() - t0
    exact = exact_pmf(energy.toy, grid, kT)
    score = compare_to_exact(frame, exact, kT)
    region = exact < 6 * kT
    return {"toy": name, "train_steps": steps, "batch": batch, "samples_per_point": samples,
            "grid_points": grid_points, "max_abs_error_kT": score["max_abs_error_kT"],
            "max_abs_error_kT_min_aligned": score["max_abs_error_kT_min_aligned"], "rmse_kT": score["rmse_kT"],
            "n_region": score["n_region"], "n_untrusted": int((~frame.trusted).sum()),
            "n_untrusted_in_region": score["n_untrusted_in_region"],
            "ess_fraction_min_region": float(frame.ess_fraction[region].min()),
            "ess_fraction_median_region": float(frame.ess_fraction[region].median()),
            "pareto_k_max_region": float(frame.pareto_k[region].max()),
            "train_wall_s": trained["wall_s"], "estimate_wall_s": estimate_s,
            "energy_evaluations_train": trained["energy_evaluations"],
            "energy_evaluations_estimate": energy.evaluations - evals0,
            "energy_evaluations_total": trained["energy_evaluations"] + energy.evaluations - evals0}


def run_fg(evaluations: int, walkers: int, seed: int, bins: int) -> dict:
    """Unbiased OpenMM MD of double_well_2d with ``evaluations`` force evaluations, scored as the rounds are."""
    import pandas as pd

    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import compare_to_reference, histogram_fes
    from cgflow.config import load_config
    from cgflow.sampling.round import run

    steps = max(100, evaluations // walkers // 100 * 100)
    campaign = load_config({"campaign": "bench-fg", "seed": seed, "system": {"type": "toy", "potential": "double_well_2d"},
                            "sampling": {"walkers": walkers, "steps": steps, "report_interval": 50, "pin_cpu": False},
                            "analysis": {"bins": bins}})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run(campaign, 0, Path(tmp))
        samples = pd.read_parquet(Path(tmp) / "samples.parquet")
    wall = time.perf_counter() - t0
    kT = campaign.sampling.kT
    edges = cv_edges(campaign)
    fes = histogram_fes(samples[["x"]].to_numpy(), edges, kT, blocks=samples["walker"].to_numpy(), n_bootstrap=2)
    reference = campaign.system.build().reference_fes(edges, campaign.sampling.temperature)
    score = compare_to_reference(fes, reference, kT, 6.0)
    crossed = int((samples.groupby("walker")["x"].agg(lambda x: (x.min() < -0.5) and (x.max() > 0.5))).sum())
    return {"method": "unbiased FG MD (OpenMM)", "walkers": walkers, "steps_per_walker": steps,
            "energy_evaluations": walkers * steps, "rmse_kT": score["rmse_kT"], "coverage": score["coverage"],
            "walkers_that_crossed": crossed, "wall_s": wall}


def trust_study(M: int = 2000, repeats: int = 60, seed: int = 2) -> dict:
    """|error| of F (kT) let through by ESS/M (and k-hat) trust rules, for too-narrow Gaussian proposals."""
    from scipy.special import logsumexp

    from cgflow.reconstruction.free_energy import kish_ess, pareto_khat

    rng = np.random.default_rng(seed)
    rows = []
    for r in (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        for _ in range(repeats):
            y = rng.normal(0.0, r, M)
            log_w = -y**2 / 2 + y**2 / (2 * r * r) + np.log(r * np.sqrt(2 * np.pi))  # target exp(-y²/2), Z = √(2π)
            err = -(logsumexp(log_w) - np.log(M) - 0.5 * np.log(2 * np.pi))
            rows.append((r, kish_ess(log_w) / M, pareto_khat(log_w), err))
    r, ess, khat, err = np.array(rows).T
    rules = {"ess_fraction>=0.05": ess >= 0.05, "ess_fraction>=0.1": ess >= 0.1, "ess_fraction>=0.2": ess >= 0.2,
             "ess_fraction>=0.3": ess >= 0.3, "ess_fraction>=0.05 & khat<=0.7": (ess >= 0.05) & (khat <= 0.7)}
    out = {}
    for name, trusted in rules.items():
        e = np.abs(err[trusted])
        out[name] = {"trusted_fraction": float(trusted.mean()), "max_abs_error_kT": float(e.max()),
                     "p95_abs_error_kT": float(np.quantile(e, 0.95)),
                     "trusted_with_error_over_0.25kT": int((np.abs(err) > 0.25)[trusted].sum()),
                     "good_proposals_trusted": float(trusted[r >= 0.8].mean())}
        print(f"{name:32s} max |err| {out[name]['max_abs_error_kT']:.3f} kT, p95 {out[name]['p95_abs_error_kT']:.3f} kT, "
              f"{out[name]['trusted_with_error_over_0.25kT']} trusted cases off by > 0.25 kT")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-sized run (one toy, short training)")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 400, 1500], help="training lengths")
    ap.add_argument("--toys", nargs="+", default=list(TOYS), choices=list(TOYS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samples", type=int, default=2000, help="flow samples per grid point")
    ap.add_argument("--grid-points", type=int, default=40)
    ap.add_argument("--fg", action="store_true", help="also run unbiased FG MD with the same energy evaluations")
    ap.add_argument("--trust-study", action="store_true", help="also the 1-D study behind min_ess_fraction = 0.2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results/bench-ccg/bench_ccg.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from cgflow.io import package_versions, write_json
    from cgflow.systems.toy import KB

    torch.set_num_threads(1)
    if args.quick:
        args.steps, args.toys, args.samples, args.grid_points = [100], ["double_well_2d"], 500, 20
    kT = KB * 300.0
    rows = []
    for name in args.toys:
        for steps in args.steps:
            row = run_ccg(name, steps, args.batch, args.samples, args.grid_points, kT, args.seed)
            rows.append(row)
            print(f"{name:20s} steps {steps:5d}: max|dF| {row['max_abs_error_kT']:.4f} kT "
                  f"(min-aligned {row['max_abs_error_kT_min_aligned']:.4f}), RMSE {row['rmse_kT']:.4f} kT, "
                  f"untrusted {row['n_untrusted']}/{args.grid_points}, ESS/M min {row['ess_fraction_min_region']:.3f}, "
                  f"train {row['train_wall_s']:.1f} s, {row['energy_evaluations_total']} energy evaluations", flush=True)
    out = {"ccg": rows, "temperature_K": 300.0, "threads": 1, "versions": package_versions()}
    if args.fg:
        budget = max(r["energy_evaluations_total"] for r in rows if r["toy"] == "double_well_2d")
        out["fg_peer"] = run_fg(budget, 32, args.seed, args.grid_points)
        print(f"unbiased FG MD, {out['fg_peer']['energy_evaluations']} energy evaluations: RMSE "
              f"{out['fg_peer']['rmse_kT']:.3f} kT, coverage {out['fg_peer']['coverage']:.2f}, "
              f"{out['fg_peer']['walkers_that_crossed']} of 32 walkers crossed the barrier")
    if args.trust_study:
        out["trust_study"] = trust_study()
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
