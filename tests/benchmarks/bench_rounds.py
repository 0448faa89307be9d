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
whether its FG steps went there at all.

    python tests/benchmarks/bench_rounds.py [--systems mb alanine] [--keep DIR] [--json PATH]
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

SYSTEMS = {
    # Müller-Brown along x: short rounds (2000 steps = 4 ps), so round 0 alone does not reach
    # the target and the bias is updated often; scored every 32k FG steps (half a round) for
    # every method. 5000-step rounds needed 520k FG steps, these 192-288k over seeds 1-2 (unbiased
    # 224k; metadynamics 288k first hit, never below for good on seed 1; 2026-12-02). Seed 1 on
    # 2026-12-03 (944a707): 416k, unbiased 224k, metadynamics 288k, so the rounds are chaotic in
    # small changes of the code too; frames every 10 steps instead of 50 also gave 416k: unlike
    # alanine's, this FES is not limited by the number of frames
    "mb": {
        "campaign": "bench-mb", "seed": 1,
        "system": {"type": "toy", "potential": "muller_brown", "cv": "x"},
        "sampling": {"walkers": 32, "steps": 2000, "report_interval": 50},
        # MBAR, not TRAM: with 2 kT barriers along x every round equilibrates, and x alone hides
        # y (basins A and C overlap in x at other y). On one campaign's frames MBAR is 0.19 kT,
        # TRAM 0.24 kT at its 1 ps lag (0.50 kT at a 0.1 ps lag)
        "guidance": {"rounds": 9, "train_steps": 600, "estimator": "mbar"},
        "analysis": {"bins": 50, "peers": ["unbiased", "metadynamics"], "budget_points": 2},
    },
    # the 2-D double well (10 kT barrier along x). Many short rounds: the frontier of what the
    # CG model knows moves by a few kT per round whatever the round's length, so a round need
    # only be long enough to relax in its bias and to give TRAM transitions at its 1 ps lag
    # (1000 steps = 2 ps, 20 frames). Scored every 16k FG steps (half a round), for every method.
    # 192k FG steps to the target and below it from there (224k before the restarts were balanced
    # over coarse cells; the rounds are chaotic in such details), 2500-step rounds 360k;
    # metadynamics 144k first hit, below for good from 272k; unbiased never (2026-12-02)
    "dw2d": {
        "campaign": "bench-dw2d", "seed": 2,
        "system": {"type": "toy", "potential": "double_well_2d"},
        "sampling": {"walkers": 32, "steps": 1000, "report_interval": 50},
        "guidance": {"rounds": 16, "train_steps": 600},
        "analysis": {"bins": 40, "peers": ["unbiased", "metadynamics"], "budget_points": 2},
    },
    # alanine dipeptide in vacuum, (phi, psi), against the shipped long-metadynamics reference.
    # 16 rounds of 12.5k steps; a cell is trusted after 1 ps of visits (below) so the frontier
    # climbs the ~15 kT barrier to the alpha_L basin (phi > 0) in rounds, not in a round each
    # few kT; TRAM on 16 Markov bins per CV: its fixed-point iteration, linear and slow once a
    # basin hangs on a few transitions, converges ~9x faster than on 32 (0.7 kT on alpha_L
    # against not converging in 50k iterations on one such round); scored at each round's end.
    # 2400 training steps and e1 = 6 kJ/mol (2.4 kT) together: at 800 steps the CG models were
    # not converged (round 10: loss 1.350 against 1.262 at 3000 steps) and put the 8-10 kT pockets
    # beside C7eq at 16-18 kT, with eps above 4 kJ/mol; unbiased there, the pockets held the
    # walkers below the filled basins. Final RMSE 0.45 kT on seeds 1 and 2 (1.07 kT before), bias
    # error down to 0.26 kT; on seed 1 each change alone did worse (2400 steps: 2.0 kT; e1 = 6: 0.81 kT,
    # alpha_L never found) (2026-12-03)
    # Frames every 50 steps (0.1 ps), not 250: the FES is a histogram of the frames, and at 0.5 ps
    # its noise was the floor (the final 6400 frames halved: 0.45 -> 0.73 kT). The same FG steps
    # then give 5x the frames, and a cell is trusted after the same 1 ps of visits (min_frames 10,
    # the default, against 2). Seed 1: 0.63 kT at round 4 (1.15 before), below 1 kJ/mol from
    # round 9 (1.08M FG steps) to the end (0.23 kT; 0.5 ps frames never got below 0.45), bias
    # error 0.16 kT; seed 2: 0.32 kT at round 9. alpha_L is entered in round 6-7 either way, and
    # the rounds after it are off by ~2.5 kT until walkers return from it (2026-12-03)
    # 4000-step rounds (34k FG steps a round with equilibration) and guidance.overfill 10 kJ/mol
    # (2026-12-04): with the well-tempered fill alone the frontier climbed the 15 kT phi ~ 0 saddle
    # by ~1 kT a round and first crossed at 476k / 510k FG steps (seeds 1 / 2; 756k with 12.5k-step
    # rounds); with the overfill at 204k / 272k. 2000-step rounds, or gamma 10 with min_frames 3,
    # did not cross sooner. After the crossing the walkers came back (TRAM connected, 0.53 kT) 4
    # rounds later on seed 1 once the levelling left a saddle's few frames alone (policy.levelled_weights).
    # This config, seed 1, with peers (46ffdf9's code): cgflow never below 1 kJ/mol in 782k FG
    # steps (0.43-0.57 kT from round 10, final 0.455), metadynamics 680k (final 0.337), unbiased
    # never (0.904). The overfill keeps pushing after everything below the scoring cutoff is
    # found: late rounds put only 2-20 % of their frames where the FES is scored.
    # Ending the overfill (2026-12-05, cgflow only, RMSE per round after the return to C7eq):
    # ended on entering C7ax: seed 1 0.42 0.39 0.39 0.74 0.77 0.43 (476k FG steps first hit),
    # seed 2 returned 2 rounds later than with it (round 15) and 0.76 1.04 0.64 0.63; ended once
    # C7ax was connected again: seed 1 0.53 0.54 0.69 0.75 0.78 0.79, seed 2 0.49 0.65 0.55 0.47
    # 0.46. Kept on, as here: seed 1 0.53 0.52 0.57 0.46 0.46 ..., seed 2 0.49 0.81 0.48 0.56. Not
    # the schedule, then: C7ax's weight hangs on the 1-2 C7eq <-> C7ax transitions a round gives
    # TRAM (seed 1: 0.033 at round 14, 0.0057 at 15 after one more, exact ~0.03)
    # Two ways to get more of those transitions, both worse (2026-12-05, cgflow only, seeds 1 / 2):
    # overfill 20 kJ/mol (basins lifted ~8 kJ/mol more against the unsampled phi ~ 0 saddle):
    # crossed in round 7 / 12 (5 / 9 at 10), then 2.5-2.8 kT to round 17 on seed 1 and 1.5 kT on
    # seed 2: the walkers spend the overfill on the outer frontier, not on the saddle. guidance.hills
    # (height 2.5 kJ/mol every 1000 steps, 5 TRAM states a round): crossed in round 6 / 4, RMSE
    # 2.4-3.3 kT after, and TRAM stopped converging within 100k iterations in round 9 / 8
    # The floor was the frames, not the crossings (2026-12-05): the late rounds of the config before
    # this one (e0/e1 1.5/6, seed_fraction 0.5, no barrier) put 2-20 % of their frames below the
    # 8 kT scoring cutoff, and TRAM's ESS stopped at ~1400 from round 10 (+33 in the last 12
    # rounds); seeds 1 and 2 ended with uncorrelated per-bin errors (r = -0.14), i.e. noise. Under
    # the applied bias itself (round 19, F_ref + bias) 96 % of the equilibrium mass sat at 8-16 kT:
    # the trusted range, so the fill, kept growing with the walkers' reach, and its partly trusted
    # edge (eps 2-3.4 kJ/mol at F 20-35) was a band 3-4 kJ/mol below the basins. Now
    # guidance.barrier 37.5 kJ/mol (the largest bias; the phi ~ 0 saddle is ~39 kJ/mol) stops the
    # fill there, e0/e1 5/12 trust that band, and seed_fraction 0.25 restarts 2 walkers a round, not
    # 4: 64 % of the equilibrium mass under round 18's bias is below 8 kT (the well-tempered ideal:
    # 68 %). cgflow only, RMSE per round (kT) from the return to C7eq: seed 1 (round 10) 0.50 0.55
    # 0.56 0.51 0.42 0.44 0.38 (578k FG steps, 0.85x metadynamics' 680k) 0.38 0.36 0.35 0.34 0.31
    # 0.30 (782k; below 1 kJ/mol from 578k on); seed 2 (round 12) 0.74 0.63 0.65 0.56 0.41 0.45
    # 0.41 0.39 (680k, 1.0x); 50-78 % of a late round's frames scored, ESS 2720 at round 22. With
    # e0/e1 3/8: seed 1 0.44 1.02 0.49 0.43 0.40 0.41 0.43 0.41 0.48 0.40 0.39 (748k) from round
    # 11, seed 2 0.49 0.46 0.44 0.42 0.42 0.42 from round 14. gamma 4 (same largest bias): seed 1
    # back in round 11 at 0.65 kT with ESS 1781 (1335 at gamma 6), stopped there for time. The
    # post-crossing rounds (C7ax entered, not yet left: 2-3 kT) still cost 4-6 rounds
    # What the rounds after the crossing are (2026-12-05, gamma 4 run, seed 1): C7eq is filled to
    # the barrier (F + bias ~ 37 kJ/mol) while unvisited pockets beside C7ax (F 16-23 kJ/mol, no
    # frames yet or eps above e1) carry no bias, 5-20 kJ/mol below it: each round the walkers
    # fill one ring of them, and come back once the phi > 0 side is filled too. Extending the
    # support by a cell, or trusting cells from 3-5 frames, left such a pocket 17-19 kJ/mol deep
    # (round 8's bias recomputed), and moved the fill's top (policy.fill: V's largest value where
    # trusted) to a thinly visited edge unless it was pinned to the deepest basin (largest bias
    # 37 -> 25 kJ/mol with 3 frames). After the return, 39-77 % of the squared error is the offset
    # of the phi > 0 side (+0.6 to +2.3 kT), whose weight (exact 0.030) hangs on 0-7 C7eq <-> C7ax
    # transitions a round: 0.002-0.05 by round. Other gammas (campaigns) and TRAM's states
    # (reweighting) move it both ways: gamma 4 (effective saddle 9.4 kJ/mol against 6.2 at gamma 6 under the ideal bias):
    # seed 1 back in round 11, 0.65 1.08 0.47 0.51 (round 14); gamma 10 (3.8 kJ/mol, 59 % of
    # the mass scored against 70 %): seed 1 back in round 12, 0.47 0.90 0.78 0.83 0.55 (round
    # 16, gamma 6: 0.38), seed 2 back in round 12, 0.56 0.45 0.49 0.42 (round 15, gamma 6: 0.56).
    # TRAM on 8 bins with a 2 ps lag (16 and 1 ps here), reweighting the same frames: gamma 4
    # seed 1 rounds 11-14 0.65 -> 0.68, 1.08 -> 0.92, 0.47 -> 0.40, 0.51 -> 0.38; seed 2 round
    # 13 0.45 -> 0.57 (phi > 0 weight 0.051 -> 0.094); gamma 10 seed 1 rounds 12-13 0.47 -> 0.47,
    # 0.90 -> 0.73. None kept: one or two seeds cannot tell these apart from the transitions' noise
    # This config with its peers in one run (7548eeb, 2026-12-05, campaign wall 2967 s): cgflow
    # 578k FG steps to 1 kJ/mol and below it from there (final 0.304 kT), metadynamics 680k
    # (0.337), unbiased never (0.904): cgflow/metadynamics 0.850, cgflow/unbiased < 0.739
    "alanine": {
        "campaign": "bench-alanine", "seed": 1,
        "system": {"type": "alanine_dipeptide", "solvent": "vacuum"},
        "sampling": {"walkers": 8, "steps": 4000, "report_interval": 50, "equilibration": 250},
        "guidance": {"rounds": 22, "train_steps": 2400, "e0": 5.0, "e1": 12.0, "markov_bins": 16, "overfill": 10.0,
                     "barrier": 37.5, "seed_fraction": 0.25},
        "analysis": {"bins": 36, "reference": "metadynamics_long", "rmse_cutoff_kT": 8.0,
                     "peers": ["unbiased", "metadynamics"], "budget_points": 1},
    },
}


def run_campaign(name: str, where: Path) -> dict:
    config = where / f"{name}.yaml"
    config.write_text(yaml.safe_dump(SYSTEMS[name], sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    out = subprocess.run([str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"),
                          "--configfile", str(config), "-d", str(where), "--cores", "2", "-q"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{name}: campaign failed\n{out.stderr[-3000:]}")
    results = where / "results" / SYSTEMS[name]["campaign"]
    result = json.loads((results / "convergence.json").read_text())
    result["wall_s"] = time.perf_counter() - t0
    summary = json.loads((results / "summary.json").read_text())
    result["outside_connected"] = [[r["round"], r["bins_outside_connected"]] for r in summary["per_round"]]
    return result


def table(name: str, conv: dict) -> list[str]:
    methods = ("cgflow", "unbiased", "metadynamics")
    budget = max(point[0] for method in methods for point in conv[method]["curve"])
    show = lambda s: f"{s:,}" if s is not None else f"> {budget:,}"  # noqa: E731
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
    for key, what in (("steps_to_target", "first hit"), ("steps_to_stay", "staying below")):
        for peer, goal in (("unbiased", 0.1), ("metadynamics", 0.7)):
            mine, theirs = conv["cgflow"].get(key), conv[peer].get(key)
            if mine is None:
                ratio = "n/a (cgflow did not reach the target)"
            elif theirs is None:
                ratio = f"< {mine / budget:.3f}"
            else:
                ratio = f"{mine / theirs:.3f}"
            lines.append(f"  cgflow/{peer:12s} = {ratio:>10s}   (target <= {goal}; {what})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=["mb", "dw2d", "alanine"])
    parser.add_argument("--keep", help="run the campaigns in this folder (kept) instead of a temporary one")
    parser.add_argument("--json", help="write the convergence results here")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cgflow-bench-rounds-") as tmp:
        base = Path(args.keep or tmp)
        for name in args.systems:
            where = base / name
            where.mkdir(parents=True, exist_ok=True)
            results[name] = run_campaign(name, where)
            print("\n".join(table(name, results[name])), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
