#!/usr/bin/env python
"""Cycle coarse graining of alanine dipeptide (vacuum, 300 K) from the energy alone (``make bench-ccg``).

A conditional flow (zuko NSF) over the 46 internal coordinates left free given (phi, psi) (X-H
bonds fixed at the HBonds lengths) is trained by the reverse KL on the amber14 energy from
OpenMM, with (phi, psi) uniform on the torus, no FG trajectory at all. Then, at each of the 36 x 36
reference grid points independently, ``F = -kT ln mean exp(-U/kT - ln q)`` with its ESS, and the
surface is scored against the shipped metadynamics_long reference where F < 20 kJ/mol (target RMSE
<= 2 kJ/mol), beside its cost in energy evaluations.

    python tests/benchmarks/bench_ccg_alanine.py [--steps 2000] [--batch 128] [--samples 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps")
    parser.add_argument("--batch", type=int, default=128, help="(phi, psi) draws per step, one sample each")
    parser.add_argument("--samples", type=int, default=200, help="flow samples per grid point")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import pandas as pd
    import torch

    from cgflow.reconstruction.alanine import Backbone, OpenMMEnergy, context_features
    from cgflow.reconstruction.flow import ConditionalFlow
    from cgflow.systems.alanine import AlanineDipeptide
    from cgflow.systems.toy import KB

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    kT = KB * 300.0
    ala = AlanineDipeptide()
    system = ala.create_system()
    backbone = Backbone(system, ala.initial_positions())
    energy = OpenMMEnergy(system, "CPU")
    flow = ConditionalFlow(backbone.features, 4, transforms=6, hidden=(128, 128), bins=8, passes=2)

    def sample(phi, psi, n=None):
        ctx = context_features(phi, psi)
        u, logq_u = flow.rsample_and_log_prob(ctx)
        xyz, log_det = backbone.to_cartesian(u, phi, psi)
        return xyz, logq_u - log_det  # ln q(R | phi, psi) on the manifold, rigid body removed

    optimiser = torch.optim.Adam(flow.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps, eta_min=5e-5)
    t0 = time.perf_counter()
    for step in range(args.steps):
        phi, psi = ((torch.rand(args.batch, dtype=torch.float64) * 2 - 1) * math.pi for _ in range(2))
        xyz, logq = sample(phi, psi)
        beta_u = energy.torch_energy(xyz) / kT
        # clashes early in training: above 1e3 kT the energy counts logarithmically
        beta_u = torch.where(beta_u < 1e3, beta_u, 1e3 + torch.log1p(beta_u.clamp_min(1e3) - 1e3))
        loss = (beta_u + logq).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        optimiser.step()
        schedule.step()
        if step % max(1, args.steps // 20) == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():10.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    train_evals, train_s = energy.evaluations, time.perf_counter() - t0

    reference = find_reference_csv()
    ref = pd.read_csv(reference)
    flow.eval()
    t1 = time.perf_counter()
    grid = ref[["phi", "psi"]].to_numpy()
    F, ess = np.empty(len(ref)), np.empty(len(ref))
    U_all = np.empty((len(ref), args.samples))
    logw_all = np.empty((len(ref), args.samples))
    bonds_all = np.empty((len(ref), args.samples, len(HEAVY_BONDS)))
    with torch.no_grad():
        for start in range(0, len(grid), 32):
            block = torch.as_tensor(np.repeat(grid[start:start + 32], args.samples, axis=0))
            xyz, logq = sample(block[:, 0], block[:, 1])
            u, _ = energy(xyz.numpy())
            logw = (-u / kT - logq.numpy()).reshape(-1, args.samples)
            logw = np.where(np.isfinite(logw), logw, -np.inf)
            rows = slice(start, start + len(logw))
            U_all[rows], logw_all[rows] = u.reshape(-1, args.samples), logw
            bonds_all[rows] = heavy_bonds(xyz.numpy()).reshape(len(logw), args.samples, -1)
            top = logw.max(axis=1, keepdims=True)
            w = np.exp(logw - top)
            F[start:start + 32] = -kT * (top[:, 0] + np.log(w.mean(axis=1)))
            ess[start:start + 32] = w.sum(axis=1) ** 2 / (w**2).sum(axis=1)
    estimate_s = time.perf_counter() - t1
    ref_F = ref.F_kJmol.to_numpy() - ref.F_kJmol.min()
    region = ref_F < 20.0
    result = {"train_steps": args.steps, "batch": args.batch, "samples_per_point": args.samples,
              "energy_evaluations_training": train_evals, "energy_evaluations_total": energy.evaluations,
              "train_s": train_s, "estimate_s": estimate_s, "region_points": int(region.sum())}
    for cut in (0.2, 0.05, 0.0):
        trusted = ess / args.samples >= cut
        ok = region & trusted & np.isfinite(F)
        diff = F[ok] - ref_F[ok]
        rmse = float(np.sqrt(np.mean((diff - diff.mean()) ** 2))) if ok.any() else float("nan")
        result[f"ess_cut_{cut:g}"] = {"rmse_kJmol": rmse, "compared": int(ok.sum()),
                                      "untrusted_in_region": int((region & ~trusted).sum())}
        print(f"ESS/M >= {cut:<4g}: RMSE vs reference {rmse:6.2f} kJ/mol over {ok.sum()} of {region.sum()} points "
              f"with F_ref < 20 kJ/mol ({(region & ~trusted).sum()} untrusted)")
    result["ess_fraction_median_region"] = float(np.median(ess[region] / args.samples))
    # the reconstruction's own ensemble: grid points weighted by exp(-F_ccg/kT), samples by their
    # self-normalised importance weights; against plain FG MD (bond lengths, energy distribution)
    weights = np.exp(logw_all - logw_all.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    point = np.exp(-(F - np.nanmin(F)) / kT)
    weights *= (point / point.sum())[:, None]
    fg_u, fg_bonds = fg_md(system, ala.initial_positions(), kT)
    rec_bonds = np.einsum("ps,psb->b", weights, bonds_all)
    bond_dev = np.abs(rec_bonds - fg_bonds.mean(axis=0))
    edges = np.linspace(min(fg_u.min(), np.percentile(U_all, 0.1)), max(fg_u.max(), np.percentile(U_all, 99.9)), 61)
    p_fg = np.histogram(fg_u, edges)[0] / len(fg_u)
    p_rec = np.histogram(U_all.ravel(), edges, weights=weights.ravel())[0]
    overlap = float(np.minimum(p_fg, p_rec / max(p_rec.sum(), 1e-300)).sum())
    result.update(heavy_bond_max_dev_nm=float(bond_dev.max()), energy_overlap=overlap,
                  fg_mean_energy_kJmol=float(fg_u.mean()), rec_mean_energy_kJmol=float((weights * U_all).sum()))
    print(f"vs FG MD ({len(fg_u)} frames): heavy-atom bond means within {bond_dev.max():.4f} nm "
          f"(target 0.005), energy distribution overlap {overlap:.2f}, mean energy "
          f"{result['rec_mean_energy_kJmol']:.1f} vs {fg_u.mean():.1f} kJ/mol")
    ref_json = json.loads(reference.with_suffix(".json").read_text())
    result["reference_fg_steps"] = ref_json.get("fg_steps")
    print(f"cost: {energy.evaluations} energy evaluations ({train_evals} training, {train_s:.0f} s; "
          f"estimate {estimate_s:.0f} s); the reference took {ref_json.get('fg_steps')} FG MD steps; "
          f"median ESS/M in the region {result['ess_fraction_median_region']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


HEAVY_BONDS = ((1, 4), (4, 5), (4, 6), (6, 8), (8, 10), (8, 14), (14, 15), (14, 16), (16, 18))


def heavy_bonds(xyz: np.ndarray) -> np.ndarray:
    """Lengths (nm) of the nine heavy-atom bonds, (n, 9), for positions (n, 22, 3)."""
    return np.stack([np.linalg.norm(xyz[:, i] - xyz[:, j], axis=-1) for i, j in HEAVY_BONDS], -1)


def fg_md(system, positions, kT: float, steps: int = 500_000, every: int = 100):
    """Potential energies (kJ/mol) and heavy-atom bond lengths of a plain 300 K FG run (2 fs, HBonds)."""
    import openmm

    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.002)
    integrator.setRandomNumberSeed(7)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300.0, 7)
    integrator.step(20_000)
    energies, bonds = [], []
    for _ in range(steps // every):
        integrator.step(every)
        state = context.getState(getEnergy=True, getPositions=True)
        energies.append(state.getPotentialEnergy()._value)
        bonds.append(heavy_bonds(state.getPositions(asNumpy=True)._value[None])[0])
    return np.array(energies), np.array(bonds)


def find_reference_csv() -> Path:
    """The shipped alanine (vacuum, phi/psi, 300 K) metadynamics_long reference."""
    import glob

    from cgflow.systems import alanine

    data = Path(alanine.__file__).parent / "data"
    found = sorted(glob.glob(str(data / "reference-*.csv")))
    if not found:
        raise SystemExit("no shipped alanine reference in cgflow/systems/data")
    return Path(found[0])


if __name__ == "__main__":
    main()
