"""Bead-CG benchmark on alanine dipeptide (``make bench-cg``): FM vs RE on the same FG data.

Reports, in one run and one JSON (``results/bench-cg/bench_cg.json``): the CG-MD (phi, psi)
FES RMSE against the FG FES for force matching and for relative entropy, with the CG probability
outside the FG's region (``outside_mass``, which the aligned RMSE cannot see); whether each model
is stable for ``--cg-ns`` ns of CG MD at 2 fs and the largest stable time step; CG MD
replica-steps/s (eager float64 and compiled float32) against FG OpenMM steps/s of the same
molecule in vacuum and OBC2 on the faster OpenMM platform (measured side by side here);
and the long Henderson check of the LJ fluid. ``--quick`` runs a smoke-sized version.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CFG = {"fm": {"batch_size": 256, "lr": 3e-3, "epochs": 40, "patience": 8},
       # RE: persistent CG chains (as in persistent contrastive divergence) need a learning rate small
       # against their mixing and many replicas; 3e-3 with 32 replicas drifted into 1.8-2.1 kT FES errors
       "re": {"lr": 1e-3, "epochs": 300, "sim_steps": 400, "replicas": 128, "report_interval": 20,
              "equilibration": 200, "max_reuse": 10},
       "md": {"timestep": 0.002, "friction": 1.0, "precision": "float32", "compile": True,
              "device": "auto"}, "n_eff_threshold": 0.9}


def speed(model, data: dict, quick: bool) -> dict:
    """CG MD replica-steps/s (eager float64, the old path, and compiled float32, the default) against
    FG OpenMM steps/s of alanine dipeptide in vacuum and in OBC2, each on its faster platform; all on
    this one pinned core, one after the other, in this run."""
    import time

    from cgflow.training import bead_campaign as bc

    fg = {}
    for solvent, platform in (("vacuum", "CPU"), ("vacuum", "Reference"), ("obc2", "CPU"), ("obc2", "Reference")):
        steps = (2000 if quick else 20_000) // (4 if solvent == "obc2" else 1)
        fg[f"{solvent} {platform}"] = bc.sample_fg_mapped(steps=steps, stride=1000 if not quick else 500,
                                                          equilibration=500, seed=2, solvent=solvent,
                                                          platform=platform)["steps_per_s"]
    best = {s: max(v for k, v in fg.items() if k.startswith(s)) for s in ("vacuum", "obc2")}
    cg, setup = {}, {}
    for mode, precision, compiled in (("eager float64", "float64", False), ("compiled float32", "float32", True)):
        for n_rep in (256, 1024, 4096):
            steps = 20 if quick else max(50, 400_000 // n_rep)
            t = time.perf_counter()
            _, rate = bc.cg_md(model, data, 0.002, steps, n_rep, steps, seed=3, precision=precision, compile=compiled)
            cg[f"{mode} x{n_rep}"] = rate
            setup[f"{mode} x{n_rep}"] = time.perf_counter() - t - n_rep * steps / rate
    ratios = {f"{k} / FG {s}": v / best[s] for k, v in cg.items() for s in best}
    for k, v in cg.items():
        print(f"CG {k:24s} {v:10.0f} replica-steps/s  (set-up incl. compile {setup[k]:5.1f} s)  "
              + "  ".join(f"{v / best[s]:6.2f}x FG {s}" for s in best), flush=True)
    print("FG steps/s: " + ", ".join(f"{k} {v:.0f}" for k, v in fg.items()), flush=True)
    return {"fg_steps_per_s": fg, "cg_replica_steps_per_s": cg, "cg_setup_s": setup, "cg_over_best_fg": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fg-steps", type=int, default=1_000_000)
    ap.add_argument("--cg-ns", type=float, default=10.0, help="production CG MD at 2 fs, ns over all replicas")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--re-epochs", type=int, default=None, help="override the RE updates")
    ap.add_argument("--henderson-iterations", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "results/bench-cg/bench_cg.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    import torch

    torch.set_num_threads(1)
    from cgflow.io import write_json
    from cgflow.sampling.cg_md import CGBlowUp
    from cgflow.sampling.platform import pin_to_free_core
    from cgflow.training import bead_campaign as bc

    pin_to_free_core()
    cfg = copy.deepcopy(CFG)
    if args.quick:
        args.fg_steps, args.cg_ns = 100_000, 0.08
        cfg["fm"]["epochs"], cfg["re"]["epochs"], args.henderson_iterations = 5, 10, 3
    if args.re_epochs:
        cfg["re"]["epochs"] = args.re_epochs
    out = {"fg_steps": args.fg_steps, "config": cfg}
    t0 = time.perf_counter()
    data = bc.sample_fg_mapped(steps=args.fg_steps, stride=100, seed=1)
    out["fg_steps_per_s"] = data["steps_per_s"]
    out["fg_frames"] = len(data["x"])
    kT = bc.KB * data["temperature"]
    print(f"FG: {len(data['x'])} frames, {data['steps_per_s']:.0f} steps/s", flush=True)
    cg_steps = int(round(args.cg_ns * 1000 / 0.002))
    replicas = 128
    for objective in ("fm", "re"):
        torch.manual_seed(0)
        model = bc.build_model(data["x"], kT)
        t = time.perf_counter()
        trainers = bc.train(objective, model, data, cfg, seed=0)
        res = {"train_s": time.perf_counter() - t, "history_tail": trainers[-1].history[-3:]}
        try:
            tr, rate = bc.cg_md(model, data, 0.002, cg_steps // replicas * 1 or 1000, replicas, 50, seed=1)
            res["stable_2fs_ns"] = tr.steps * 0.002 / 1000 * replicas
            res["cg_replica_steps_per_s"] = rate
            rmse, _, _ = bc.fes_rmse(bc.phipsi(tr.positions[len(tr.positions) // 10:].reshape(-1, 10, 3)),
                                     data["phipsi"], kT)
            res["fes"] = rmse
        except CGBlowUp as exc:
            res["stable_2fs_ns"] = 0.0
            res["blow_up"] = str(exc)
        largest = None
        for dt in (0.002, 0.004, 0.006, 0.008, 0.010):
            try:
                bc.cg_md(model, data, dt, int(20 / dt) if not args.quick else 500, 16, 100, seed=2)  # 20 ps each
                largest = dt
            except CGBlowUp:
                break
        res["largest_stable_dt_ps"] = largest
        out[objective] = res
        print(objective, json.dumps({k: v for k, v in res.items() if k != "history_tail"}), flush=True)
    out["speed"] = speed(model, data, args.quick)
    # long Henderson check
    sys.path.insert(0, str(ROOT / "tests/unit"))
    from test_cg_henderson import henderson

    nodes, u, exact, u_bi, hkT, well, trainer = henderson(n_fg_frames=4000 if not args.quick else 500,
                                                          cg_steps=4000 if not args.quick else 1000,
                                                          iterations=args.henderson_iterations)
    out["henderson"] = {"max_err_well_kT": float(np.abs(u - exact)[well].max() / hkT),
                        "boltzmann_inversion_err_kT": float(np.abs(u_bi - exact)[well].max() / hkT),
                        "simulations": trainer.samples.n_simulations, "iterations": len(trainer.history)}
    out["wall_s"] = time.perf_counter() - t0
    write_json(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("config",)}, indent=1, default=str))


if __name__ == "__main__":
    main()
