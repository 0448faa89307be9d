#!/usr/bin/env python
"""FG steps to a target FES error: cgflow's CG-guided rounds against unbiased MD and OpenMM's
well-tempered metadynamics, with the same walkers and FG step budget, in one run per system.

Each system is a whole campaign (``snakemake`` with ``analysis.peers: [unbiased,
metadynamics]``) in a scratch folder; its ``convergence.json`` gives every method's FES RMSE
against the reference at the same budget points and the FG steps to the target (0.5 kT toys,
1 kJ/mol alanine). Printed: steps to target per method and the ratios cgflow/unbiased (target
<= 0.1) and cgflow/metadynamics (target <= 0.7). A method that never reaches the target is
shown as "> budget" and its ratio as an upper bound. Beside the first hit, each method's steps
from which its RMSE stays below the target to the end of the budget, and those ratios: a first
hit between noisy points can be luck. Last, per round, how far cgflow's bias is from the
well-tempered bias of the reference (``bias_error_kT``): whether a slow campaign is slow because
of its bias; and the share of each round's frames where the FES is scored (``on_target_share``):
whether its FG steps went there at all. And an oracle (``run_oracle``): the same walkers and
budget under the reference's own well-tempered bias from the first FG step, with the metadynamics
peer beside it, seed by seed: what the guidance costs against a bias known in advance, and on
how many seeds this estimator, these walkers and frames can meet 0.7x metadynamics at all.
Where unbiased MD misses the target within the budget, plain MD from the same start runs for
10x the budget (``run_unbiased``): cgflow/unbiased <= 0.1 asks whether unbiased MD needs 10x
cgflow's steps, a horizon beyond the shared budget. For the toys, the most a bias on the CV
can do (``exit_bound``): how many times unbiased MD's crossings out of the deepest basin it can
give at best, from the potential alone; ``--exit-bound 300 150`` prints only that, at the given
temperatures, in seconds.

    python tests/benchmarks/bench_rounds.py [--systems mb alanine] [--keep DIR] [--json PATH] [--oracle-seeds 1 2]
                                            [--unbiased-factor 10] [--exit-bound KELVIN ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GOALS = {"unbiased": 0.1, "metadynamics": 0.7}  # the targets: most FG steps cgflow may take per peer step
MEASURES = {"steps_to_target": "first hit", "steps_to_stay": "staying below"}  # convergence keys, as the table names them

SYSTEMS = {
    # What each config was measured against, and what else was tried: HISTORY.md beside this file.
    # Müller-Brown along x: short rounds (2000 steps = 4 ps), so round 0 alone does not reach
    # the target and the bias is updated often; scored every 32k FG steps (half a round). Its
    # 1/10 of unbiased MD is out of reach at 300 K: a bias that at most flattens the x PMF lowers
    # basin A's lowest exit (y hides it) by 1.17 kT, 3.2x the crossings at most (exit_bound, HISTORY.md)
    "mb": {
        "campaign": "bench-mb", "seed": 1,
        "system": {"type": "toy", "potential": "muller_brown", "cv": "x"},
        "sampling": {"walkers": 32, "steps": 2000, "report_interval": 50},
        # gamma 2, about the PMF's 2.1 kT barrier: x hides the A -> C saddle (at x = -0.82, beyond
        # basin A), which no bias on x lowers, so at gamma 8 each round's walkers could not follow
        # their bias to the x > 0 side (34-57 % of the frames there against 65-75 % at equilibrium
        # under it) and MBAR, which takes every round as in equilibrium, weighed that side 2x too
        # light. MBAR, not TRAM: cells of x are not Markov states where x hides y (at gamma 8 TRAM
        # reached the target in 192k FG steps on seed 1 but ended at 0.34 kT)
        "guidance": {"rounds": 9, "train_steps": 600, "estimator": "mbar", "gamma": 2.0},
        # metadynamics at its own best, chosen on seeds 4-6 over bias factor 4/8/16, a Gaussian every
        # 250/500 steps and height kT/2 or kT (HISTORY.md, 2026-12-07): median first hit 192k FG steps
        # against 448k for the factor 8 every 500 steps it ran with before
        "analysis": {"bins": 50, "peers": ["unbiased", "metadynamics"], "budget_points": 2,
                     "metadynamics": {"bias_factor": 16.0, "frequency": 250, "height": 1.25}},
    },
    # not run by default: Müller-Brown at 150 K along s = x - y, a CV that sees basin A's exit (a
    # bias on it may speed the crossings up ~4500x: exit_bound), for whoever weighs the target of
    # 1/10 of unbiased MD on Müller-Brown: there plain MD still reaches it in ~1M FG steps, and
    # neither method gets near a tenth of that (HISTORY.md)
    "mb150": {
        "campaign": "bench-mb150", "seed": 1,
        "system": {"type": "toy", "potential": "muller_brown", "cv": {"s": "x - y"}},
        "sampling": {"walkers": 32, "steps": 2000, "report_interval": 50, "temperature": 150.0},
        "guidance": {"rounds": 14, "train_steps": 600},
        "analysis": {"bins": 50, "peers": ["unbiased", "metadynamics"], "budget_points": 2,
                     "metadynamics": {"bias_factor": 8.0}},
    },
    # the 2-D double well (10 kT barrier along x). Many short rounds: the frontier of what the
    # CG model knows moves by a few kT per round whatever the round's length, so a round need
    # only be long enough to relax in its bias and to give TRAM transitions at its 1 ps lag
    # (1000 steps = 2 ps, 20 frames). Scored every 16k FG steps (half a round)
    "dw2d": {
        "campaign": "bench-dw2d", "seed": 2,
        "system": {"type": "toy", "potential": "double_well_2d"},
        "sampling": {"walkers": 32, "steps": 1000, "report_interval": 50},
        "guidance": {"rounds": 16, "train_steps": 600},
        "analysis": {"bins": 40, "peers": ["unbiased", "metadynamics"], "budget_points": 2},
    },
    # alanine dipeptide in vacuum, (phi, psi), against the shipped long-metadynamics reference,
    # scored at each round's end. Frames every 0.02 ps (the FES is a histogram of them, and at
    # 0.1 ps their count was its noise floor), a cell trusted after 1 ps of them; TRAM on
    # 16 Markov bins per CV (on 32 its fixed point converges ~9x slower once a basin hangs on a
    # few transitions); 2400 training steps (at 800 the CG models were not converged); overfill
    # 10 kJ/mol so the frontier climbs the 15 kT phi ~ 0 saddle in ~5 rounds, not ~1 kT a round;
    # barrier 37.5 kJ/mol (the saddle is ~39) so the late rounds sample where the FES is scored
    "alanine": {
        "campaign": "bench-alanine", "seed": 1,
        "system": {"type": "alanine_dipeptide", "solvent": "vacuum"},
        "sampling": {"walkers": 8, "steps": 4000, "report_interval": 10, "equilibration": 250},
        "guidance": {"rounds": 22, "train_steps": 2400, "e0": 5.0, "e1": 12.0, "markov_bins": 16, "overfill": 10.0,
                     "barrier": 37.5, "seed_fraction": 0.25, "min_frames": 50},
        # metadynamics at its own best, chosen on seeds 4-5 over a Gaussian every 125/250/500 steps,
        # height kT/2 or kT and bias factor 6 (gamma) or 10 (HISTORY.md, 2026-12-07): first hits
        # 170k and 204k FG steps where the defaults (every 500 steps, kT/2) took 510k or never
        "analysis": {"bins": 36, "reference": "metadynamics_long", "rmse_cutoff_kT": 8.0,
                     "peers": ["unbiased", "metadynamics"], "budget_points": 1,
                     "metadynamics": {"frequency": 125, "height": 2.5}},
    },
}


def run_campaign(name: str, where: Path, config: dict | None = None) -> dict:
    config = config or SYSTEMS[name]
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    out = subprocess.run([str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"),
                          "--configfile", str(path), "-d", str(where), "--cores", "2", "-q"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{name}: campaign failed\n{out.stderr[-3000:]}")
    results = where / "results" / config["campaign"]
    result = json.loads((results / "convergence.json").read_text())
    result["wall_s"] = time.perf_counter() - t0
    summary = json.loads((results / "summary.json").read_text())
    result["outside_connected"] = [[r["round"], r["bins_outside_connected"]] for r in summary["per_round"]]
    return result


def ideal_bias(config: dict, reference_csv: Path, out: Path) -> None:
    """The reference's well-tempered bias (:func:`cgflow.analysis.reference.well_tempered_bias`)
    for ``config``'s campaign, as a bias.npz."""
    from cgflow.analysis.fes import read_fes_csv
    from cgflow.analysis.reference import well_tempered_bias
    from cgflow.config import load_config

    campaign = load_config(config)
    well_tempered_bias(campaign, read_fes_csv(reference_csv, list(campaign.system.cv_names))).save(out)


def one_round_config(name: str, campaign: str, seed: int, factor: int = 1, bias: Path | None = None) -> dict:
    """``SYSTEMS[name]`` as one round of ``factor`` times its FG step budget, under ``bias`` from
    the first FG step (None: plain MD; one state, so its reweighting is the histogram), scored at
    as many budget points as the campaign, ``factor`` times as far apart."""
    cfg = SYSTEMS[name]
    s, rounds = cfg["sampling"], cfg["guidance"]["rounds"] + 1
    eq = s.get("equilibration", 0)
    guidance = {**cfg["guidance"], "rounds": 0}
    if bias is not None:
        guidance["initial_bias"] = str(Path(bias).resolve())
    return {**cfg, "campaign": campaign, "seed": seed,
            "sampling": {**s, "steps": factor * rounds * (s["steps"] + eq) - eq},
            "guidance": guidance,
            "analysis": {**cfg["analysis"], "peers": [],
                         "budget_points": rounds * cfg["analysis"]["budget_points"]}}


def oracle_config(name: str, seed: int, bias: Path) -> dict:
    """``SYSTEMS[name]`` as an oracle's campaign: ``bias`` from the first FG step, the whole
    budget in one round (MBAR of one state), scored at the same budget points, with the
    metadynamics peer of ``SYSTEMS[name]`` on the same seed beside it."""
    cfg = one_round_config(name, f"{SYSTEMS[name]['campaign']}-oracle", seed, bias=bias)
    cfg["analysis"]["peers"] = ["metadynamics"]
    return cfg


def unbiased_config(name: str, factor: int) -> dict:
    """``SYSTEMS[name]``'s walkers as plain MD for ``factor`` times the campaign's budget, with
    the campaign's seed: cgflow/unbiased <= 0.1 asks whether unbiased MD needs 10x cgflow's
    steps, which the shared budget cannot show when the unbiased peer misses the target."""
    cfg = SYSTEMS[name]
    return one_round_config(name, f"{cfg['campaign']}-unbiased-x{factor}", cfg["seed"], factor=factor)


def run_unbiased(name: str, where: Path, factor: int) -> dict:
    """:func:`unbiased_config` run in ``where``: its curve, steps to the target and budget."""
    folder = where / f"{name}-unbiased-x{factor}"
    folder.mkdir(parents=True, exist_ok=True)
    return {"factor": factor, **run_campaign(name, folder, unbiased_config(name, factor))["cgflow"]}


def run_oracle(name: str, where: Path, seeds: list[int]) -> dict:
    """The campaign an oracle would run (:func:`oracle_config`), seed by seed, under the
    :func:`ideal_bias` of the reference that ``name``'s campaign in ``where / name`` used: how much
    of cgflow's budget goes to learning the bias, and whether the target can be met at all with
    this estimator, these walkers and frames."""
    reference = where / name / "results" / SYSTEMS[name]["campaign"] / "reference.csv"
    bias = where / f"{name}-oracle-bias.npz"
    ideal_bias(SYSTEMS[name], reference, bias)
    results = {}
    for seed in seeds:
        folder = where / f"{name}-oracle-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        conv = run_campaign(name, folder, oracle_config(name, seed, bias))
        results[seed] = {"oracle": conv["cgflow"], "metadynamics": conv["metadynamics"]}
    return results


def exit_bound(config: dict, temperature: float | None = None, points: tuple[int, int] = (541, 441)) -> dict:
    """How much faster a bias on the CV alone can make walkers leave the deepest basin (A) of
    ``config``'s 2-D toy with one CV, at ``temperature`` (K; None: the config's), if the bias at
    most flattens the PMF along the CV (the well-tempered family, gamma >= 1).

    On a ``points`` grid over the box, A is the steepest-descent basin of the lowest point and its
    exits are its edge points; the CV is cut into as many bins as the grid has x columns. A bias
    V(s) raises an exit b and A's own valley at b's value of the CV by the same V(s_b), and it
    lifts A's minimum against s_b by at most F(s_b) - F(s_A), so b stays at least
    max(U_b - valley(s_b), U_b - U_A - (F(s_b) - F(s_A))) above A. Returns the unbiased barrier of
    A's lowest exit and that lowest bound (kT, with where they are, nm) and the crossings ratio
    exp(their difference): at most that many times the crossings of unbiased MD, and so at least
    its inverse of unbiased MD's FG steps for the round trips a PMF along the CV needs."""
    import numpy as np

    from cgflow.config import load_config
    from cgflow.systems.toy import KB

    campaign = load_config(config)
    system = campaign.system.build() if campaign.system.is_toy else None
    if system is None or system.coordinates != ("x", "y") or len(system.cvs) != 1:
        raise ValueError("exit_bound needs a toy on x and y with one CV")
    kT = campaign.sampling.kT if temperature is None else KB * temperature
    x, y = (np.linspace(*system.box[c], n) for c, n in zip("xy", points))
    coords = dict(zip("xy", np.meshgrid(x, y, indexing="ij")))
    U = system.potential(**coords)
    cv = system.cvs[0].fn(**{c: coords[c] for c in system.cvs[0].fn.variables})
    nx, ny = U.shape
    shifts = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    neighbours = lambda a, fill: np.stack([np.pad(a, 1, constant_values=fill)[1 + dx:1 + dx + nx, 1 + dy:1 + dy + ny]  # noqa: E731
                                           for dx, dy in shifts])
    step = np.array(shifts)[np.argmin(neighbours(U, np.inf), axis=0)]
    ix, iy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    sink = ((ix + step[..., 0]) * ny + iy + step[..., 1]).ravel()
    while not np.array_equal(sink[sink], sink):
        sink = sink[sink]
    a = int(np.argmin(U))
    basin = sink.reshape(nx, ny) == a
    edge = basin & ~neighbours(basin, False).all(axis=0)
    edge[[0, -1], :] = edge[:, [0, -1]] = False  # the box's walls are no exits
    cell = np.minimum(((cv - cv.min()) / np.ptp(cv) * nx).astype(int), nx - 1).ravel()
    log_mass, valley = np.full(nx, -np.inf), np.full(nx, np.inf)
    np.logaddexp.at(log_mass, cell, -U.ravel() / kT)
    np.minimum.at(valley, cell[basin.ravel()], U.ravel()[basin.ravel()])
    F = -kT * log_mass
    bx, by = np.nonzero(edge)
    u_exit, u_a, s_exit = U[bx, by], U.flat[a], cell.reshape(nx, ny)[bx, by]
    biased = np.maximum(u_exit - valley[s_exit], u_exit - u_a - np.maximum(F[s_exit] - F[cell[a]], 0.0))
    low, best = int(np.argmin(u_exit)), int(np.argmin(biased))
    return {"temperature_K": kT / KB, "cv": system.cvs[0].expression,
            "barrier_kT": float((u_exit[low] - u_a) / kT), "exit_nm": [float(x[bx[low]]), float(y[by[low]])],
            "biased_barrier_kT": float(biased[best] / kT), "biased_exit_nm": [float(x[bx[best]]), float(y[by[best]])],
            "crossings_ratio": float(np.exp((u_exit[low] - u_a - biased[best]) / kT))}


def bound_line(bound: dict) -> str:
    return (f"  bound at {bound['temperature_K']:.0f} K: basin A's lowest exit is {bound['barrier_kT']:.2f} kT up at "
            f"({bound['exit_nm'][0]:.2f}, {bound['exit_nm'][1]:.2f}) nm; a bias on {bound['cv']} that at most flattens its PMF "
            f"leaves every exit >= {bound['biased_barrier_kT']:.2f} kT up: <= {bound['crossings_ratio']:.3g}x the "
            f"crossings of unbiased MD, so cgflow/unbiased >= ~{1 / bound['crossings_ratio']:.2g}")


def ratio_text(mine: int | None, theirs: int | None, horizon: int, who: str) -> str:
    """``who``'s steps over a peer's, as printed: an upper bound (against ``horizon``) where the
    peer never reached the target, n/a where ``who`` did not."""
    if mine is None:
        return f"n/a ({who} did not reach the target)"
    return f"< {mine / horizon:.3f}" if theirs is None else f"{mine / theirs:.3f}"


def table(name: str, conv: dict) -> list[str]:
    methods = ("cgflow", "unbiased", "metadynamics")
    budget = max(point[0] for method in methods for point in conv[method]["curve"])
    show = lambda s, horizon=budget: f"{s:,}" if s is not None else f"> {horizon:,}"  # noqa: E731
    lines = [f"{name}: target {conv['target_kT']:.3g} kT, budget {budget:,} FG steps per method, "
             f"campaign wall {conv['wall_s']:.0f} s"]
    for m in methods:
        final = conv[m]["curve"][-1][1]
        lines.append(f"  {m:13s} steps to target {show(conv[m]['steps_to_target']):>14s}   below it from "
                     f"{show(conv[m].get('steps_to_stay')):>14s} on   final RMSE {final:.3f} kT")
    errors = conv["cgflow"].get("bias_error_kT") or []
    lines.append("  cgflow bias error vs the well-tempered bias of the reference, kT, by round: "
                 + " ".join(f"{k}:{e:.2f}" for k, e in errors))
    shares = conv["cgflow"].get("on_target_share") or []
    lines.append("  cgflow frames where the FES is scored (reference below the RMSE cutoff), by round: "
                 + " ".join(f"{k}:{s:.2f}" for k, s in shares))
    outside = conv.get("outside_connected") or []
    lines.append("  cgflow FES bins outside TRAM's connected set (a basin no walker has left yet; its depth is "
                 "MBAR's guess), by round: " + " ".join(f"{k}:{n}" for k, n in outside))
    long = conv.get("unbiased_long")
    if long:
        long_budget = long["factor"] * budget
        lines.append(f"  unbiased MD for {long['factor']}x the budget ({long_budget:,} FG steps, one run): steps to target "
                     f"{show(long['steps_to_target'], long_budget)}, below it from "
                     f"{show(long.get('steps_to_stay'), long_budget)} on, final RMSE {long['curve'][-1][1]:.3f} kT")
    for key, what in MEASURES.items():
        for peer, goal in GOALS.items():
            theirs_conv, horizon, source = conv[peer], budget, ""
            if peer == "unbiased" and long and conv[peer].get(key) is None:
                theirs_conv, horizon, source = long, long_budget, f"; unbiased: the {long['factor']}x run"
            ratio = ratio_text(conv["cgflow"].get(key), theirs_conv.get(key), horizon, "cgflow")
            lines.append(f"  cgflow/{peer:12s} = {ratio:>10s}   (target <= {goal}; {what}{source})")
    if conv.get("exit_bound"):
        lines.append(bound_line(conv["exit_bound"]))
    oracle = conv.get("oracle") or {}
    if oracle:
        # what a bias known in advance gives against metadynamics on the same seed: whether 0.7x
        # metadynamics is within reach of any guidance with these walkers, frames and estimator
        lines.append("  oracle (the reference's well-tempered bias from the first FG step, one round) and metadynamics "
                     "beside it, by seed (first hit / below from):")
        within = dict.fromkeys(MEASURES, 0)
        for seed, pair in oracle.items():
            o, m = pair["oracle"], pair["metadynamics"]
            ratios = []
            for key, what in MEASURES.items():
                ratios.append(f"{what} {ratio_text(o.get(key), m.get(key), budget, 'the oracle')}")
                within[key] += o.get(key) is not None and (m.get(key) is None or o[key] <= GOALS["metadynamics"] * m[key])
            lines.append(f"    seed {seed}: oracle {show(o['steps_to_target'])} / {show(o.get('steps_to_stay'))}, "
                         f"final {o['curve'][-1][1]:.3f} kT; metadynamics {show(m['steps_to_target'])} / "
                         f"{show(m.get('steps_to_stay'))}, final {m['curve'][-1][1]:.3f} kT; oracle/metadynamics: "
                         + ", ".join(ratios))
        lines.append(f"  oracle within {GOALS['metadynamics']}x metadynamics on {within['steps_to_target']} of "
                     f"{len(oracle)} seeds (first hit), {within['steps_to_stay']} of {len(oracle)} (staying below)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=["mb", "dw2d", "alanine"])
    parser.add_argument("--keep", help="run the campaigns in this folder (kept) instead of a temporary one")
    parser.add_argument("--json", help="write the convergence results here")
    parser.add_argument("--oracle-seeds", nargs="*", type=int, default=[1, 2, 3, 4],
                        help="seeds of the oracle runs (none: skip them)")
    parser.add_argument("--unbiased-factor", type=int, default=10,
                        help="where the unbiased peer misses the target in the budget, run plain MD for this many "
                             "times the budget to bound cgflow/unbiased (0 or 1: skip)")
    parser.add_argument("--exit-bound", nargs="+", type=float, metavar="KELVIN",
                        help="only print exit_bound for the toys of --systems at these temperatures")
    args = parser.parse_args(argv)
    if args.exit_bound:
        for name in (n for n in args.systems if SYSTEMS[n]["system"]["type"] == "toy"):
            for temperature in args.exit_bound:
                print(f"{name}: {bound_line(exit_bound(SYSTEMS[name], temperature)).strip()}")
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="cgflow-bench-rounds-") as tmp:
        base = Path(args.keep or tmp)
        for name in args.systems:
            where = base / name
            where.mkdir(parents=True, exist_ok=True)
            results[name] = run_campaign(name, where)
            if SYSTEMS[name]["system"]["type"] == "toy":
                results[name]["exit_bound"] = exit_bound(SYSTEMS[name])
            results[name]["oracle"] = run_oracle(name, base, args.oracle_seeds)
            unbiased = results[name]["unbiased"]
            if args.unbiased_factor > 1 and None in (unbiased["steps_to_target"], unbiased.get("steps_to_stay")):
                results[name]["unbiased_long"] = run_unbiased(name, base, args.unbiased_factor)
            print("\n".join(table(name, results[name])), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
