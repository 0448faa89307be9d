#!/usr/bin/env python
"""Cycle coarse graining of alanine dipeptide (vacuum, 300 K) with the package's ccg stage (``make bench-ccg``).

1. **F(phi, psi) from the energy alone**: the campaign code (``cgflow reconstruct`` + ``cgflow
   ccg-fes``) on ``config/examples/ccg_alanine.yaml`` (steps, batch and samples per point from the
   options): a flow over the 46 internal coordinates left free given (phi, psi), trained by reverse
   KL on the amber14 energy with (phi, psi) uniform on the torus, then F at each of the 36 x 36
   reference grid points independently, scored against the shipped metadynamics_long reference
   where F < 20 kJ/mol, beside its cost in energy evaluations. The backmapped ensemble
   (``ccg/backmapped.dcd``) is set against plain FG MD: every bond's mean length, and the overlap
   of the potential-energy distributions.
2. **All-atom from the 10 heavy-atom beads**: the hydrogen flow q(H | heavy atoms) is trained by
   reverse KL with the heavy atoms of half the FG MD frames, then puts hydrogens on the heavy atoms
   of the other half; the same figures against FG MD.

    python tests/benchmarks/bench_ccg_alanine.py [--steps 2000] [--batch 128] [--samples 200]
        [--h-steps 600] [--fg-steps 400000] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps of the (phi, psi) flow")
    parser.add_argument("--batch", type=int, default=128, help="(phi, psi) draws per step, one sample each")
    parser.add_argument("--samples", type=int, default=200, help="flow samples per grid point")
    parser.add_argument("--h-steps", type=int, default=600, help="Adam steps of the hydrogen flow")
    parser.add_argument("--h-candidates", type=int, default=8, help="hydrogen candidates per frame, one kept by weight")
    parser.add_argument("--fg-steps", type=int, default=400_000, help="FG MD steps (2 fs) for the comparison")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="folder for the ccg outputs (default: a temporary one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-ccg-alanine-"))
    result = {"out": str(out)}
    fg = fg_md(args.fg_steps, seed=7)
    print(f"FG MD: {len(fg['energy'])} frames from {args.fg_steps} steps ({fg['wall_s']:.0f} s)", flush=True)
    result["fg"] = {"steps": args.fg_steps, "frames": len(fg["energy"]), "mean_energy_kJmol": float(fg["energy"].mean())}
    result["ccg"] = ccg_stage(args, out, fg)
    result["hydrogens"] = hydrogens_from_beads(args, fg)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))


def ccg_stage(args, out: Path, fg: dict) -> dict:
    """Run the package's ccg stage on the example config and score it."""
    import mdtraj
    import yaml

    from cgflow.analysis.campaign import write_reference
    from cgflow.config import load_config
    from cgflow.reconstruction.campaign import write_ccg_fes, write_flow

    cfg = yaml.safe_load((ROOT / "config" / "examples" / "ccg_alanine.yaml").read_text())
    cfg["seed"] = args.seed
    cfg["ccg"]["train"].update(steps=args.steps, batch=args.batch)
    cfg["ccg"]["estimate"]["samples_per_point"] = args.samples
    campaign = load_config(cfg)
    kT = campaign.sampling.kT
    t0 = time.perf_counter()
    write_flow(campaign, out)
    write_reference(campaign, out / "reference.csv")
    summary = write_ccg_fes(campaign, out / "flow.pt", out / "flow.json", out, out / "reference.csv")
    wall = time.perf_counter() - t0
    cmp = summary["vs_reference"]
    print(f"F vs reference (F_ref < {cmp['cutoff_kT'] * kT:.1f} kJ/mol): RMSE {cmp['rmse_kT'] * kT:.2f} kJ/mol over "
          f"{cmp['n_compared']} of {cmp['n_region']} points ({cmp['n_untrusted_in_region']} untrusted); median ESS/M "
          f"{summary['ess_fraction_median']:.3f} (all), {summary['ess_fraction_median_low_F']:.3f} (trusted, low F)")
    print(f"cost: {summary['energy_evaluations_total']} energy evaluations (training "
          f"{summary['energy_evaluations_training']}, estimate {summary['energy_evaluations_estimate']}, backmap "
          f"{summary['energy_evaluations_backmap']}), {wall:.0f} s; no FG MD", flush=True)
    traj = mdtraj.load(str(out / "backmapped.dcd"), top=str(out / "backmapped.pdb"))
    scored = against_fg(traj.xyz.astype(float), fg, "backmapped (phi, psi) ensemble")
    return {"summary": {k: summary[k] for k in ("rmse_vs_reference_kJmol", "vs_reference", "n_untrusted",
                                                "ess_fraction_median", "ess_fraction_median_low_F", "backmapped",
                                                "energy_evaluations_training", "energy_evaluations_estimate",
                                                "energy_evaluations_backmap", "energy_evaluations_total")},
            "wall_s": wall, **scored}


def hydrogens_from_beads(args, fg: dict) -> dict:
    """Train q(H | heavy atoms) on half the FG frames' heavy atoms; backmap the other half."""
    from cgflow.reconstruction.backmap import backmap_hydrogens, hydrogen_flow, hydrogen_setup, train_hydrogen_flow
    from cgflow.reconstruction.training import TrainSettings
    from cgflow.systems.alanine import HEAVY_ATOMS

    _, _, hmap, energy = hydrogen_setup()
    beads = fg["xyz"][:, list(HEAVY_ATOMS)]  # the CG map: the 10 heavy atoms
    train_beads, test_beads = beads[0::2], beads[1::2]
    flow = hydrogen_flow(hmap, seed=args.seed)
    t0 = time.perf_counter()
    result = train_hydrogen_flow(flow, energy, train_beads,
                                 TrainSettings(steps=args.h_steps, batch=128, lr=1e-3, log_interval=max(1, args.h_steps // 10),
                                               seed=args.seed + 1))
    train_s = time.perf_counter() - t0
    back = backmap_hydrogens(flow, energy, test_beads, args.h_candidates, np.random.default_rng(args.seed))
    print(f"hydrogen flow: {args.h_steps} steps, {result['energy_evaluations']} energy evaluations ({train_s:.0f} s); "
          f"{len(test_beads)} frames backmapped, median ESS of {args.h_candidates} candidates "
          f"{np.median(back['ess']):.2f}", flush=True)
    scored = against_fg(back["xyz"], {k: v[1::2] for k, v in fg.items() if k != "wall_s"}, "hydrogens on FG heavy atoms")
    return {"train_evaluations": result["energy_evaluations"], "train_s": train_s, "frames": len(test_beads),
            "candidates_per_frame": args.h_candidates, "median_candidate_ess": float(np.median(back["ess"])), **scored}


def against_fg(xyz: np.ndarray, fg: dict, label: str) -> dict:
    """Every bond's mean length and the potential-energy distribution of ``xyz`` vs FG MD's."""
    from cgflow.reconstruction.alanine import HYDROGENS, OpenMMEnergy
    from cgflow.systems.alanine import AlanineDipeptide

    system = AlanineDipeptide().create_system()
    energy, _ = OpenMMEnergy(system, "CPU")(xyz)
    pairs = bond_pairs()
    dev = np.abs(bond_lengths(xyz, pairs).mean(0) - bond_lengths(fg["xyz"], pairs).mean(0))
    x_h = np.array([i in HYDROGENS or j in HYDROGENS for i, j in pairs])
    overlap = histogram_overlap(energy, fg["energy"])
    # the same figure for FG frames against FG MD: what a perfect ensemble of this size scores
    rng = np.random.default_rng(0)
    baseline = float(np.median([histogram_overlap(rng.choice(fg["energy"], len(energy)), fg["energy"])
                                for _ in range(20)]))
    print(f"{label} vs FG MD: bond means within {dev.max():.4f} nm (heavy {dev[~x_h].max():.4f}, X-H "
          f"{dev[x_h].max():.5f}; target 0.005), energy overlap {overlap:.2f} ({len(energy)} FG frames: "
          f"{baseline:.2f}), mean energy {energy.mean():.1f} vs {fg['energy'].mean():.1f} kJ/mol", flush=True)
    return {"bond_max_dev_nm": float(dev.max()), "heavy_bond_max_dev_nm": float(dev[~x_h].max()),
            "xh_bond_max_dev_nm": float(dev[x_h].max()), "energy_overlap": overlap,
            "energy_overlap_fg_same_size": baseline,
            "mean_energy_kJmol": float(energy.mean()), "fg_mean_energy_kJmol": float(fg["energy"].mean())}


def bond_pairs() -> list[tuple[int, int]]:
    from cgflow.systems.alanine import AlanineDipeptide

    return [(b[0].index, b[1].index) for b in AlanineDipeptide().topology().bonds()]


def bond_lengths(xyz: np.ndarray, pairs) -> np.ndarray:
    """Lengths (n, bonds) nm."""
    return np.stack([np.linalg.norm(xyz[:, i] - xyz[:, j], axis=-1) for i, j in pairs], -1)


def histogram_overlap(a: np.ndarray, b: np.ndarray, bins: int = 60) -> float:
    """Overlap sum_k min(p_k, q_k) of two samples' normalised histograms on common bins (1 = same)."""
    edges = np.linspace(min(np.percentile(a, 0.5), np.percentile(b, 0.5)),
                        max(np.percentile(a, 99.5), np.percentile(b, 99.5)), bins + 1)
    p = np.histogram(np.clip(a, edges[0], edges[-1]), edges)[0] / len(a)
    q = np.histogram(np.clip(b, edges[0], edges[-1]), edges)[0] / len(b)
    return float(np.minimum(p, q).sum())


def fg_md(steps: int, seed: int, every: int = 100) -> dict:
    """Positions (n, 22, 3) nm and potential energies (kJ/mol) of a plain 300 K FG run (2 fs, HBonds)."""
    import openmm

    from cgflow.systems.alanine import AlanineDipeptide

    ala = AlanineDipeptide()
    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.002)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(ala.create_system(), integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(ala.initial_positions())
    context.setVelocitiesToTemperature(300.0, seed)
    t0 = time.perf_counter()
    integrator.step(20_000)
    energies, xyz = [], []
    for _ in range(steps // every):
        integrator.step(every)
        state = context.getState(getEnergy=True, getPositions=True)
        energies.append(state.getPotentialEnergy()._value)
        xyz.append(state.getPositions(asNumpy=True)._value)
    return {"energy": np.array(energies), "xyz": np.array(xyz), "wall_s": time.perf_counter() - t0}


if __name__ == "__main__":
    main()
