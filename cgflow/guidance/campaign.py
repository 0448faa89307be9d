"""The ``cgflow guide`` action: round k's CG ensemble and FG samples -> the bias and the walker
starts of round k+1, with the round's convergence diagnostics."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cgflow.guidance.bias import BiasGrid
from cgflow.guidance.policy import (Basis, data_free_energy_range, data_support, fill, fit_policy, held_outside,
                                    trust)
from cgflow.io import package_versions, write_json
from cgflow.sampling.hills import FILE as HILLS_FILE, RoundStates

log = logging.getLogger(__name__)


def ensemble_at(model, grid, kT: float, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble-mean free energy (unshifted) and disagreement eps at ``points``, kJ/mol."""
    from cgflow.models.cv_energy import free_energies_at

    F = free_energies_at(model, grid, kT, points)
    return F.mean(axis=0), F.std(axis=0)


def learning_frames(campaign, sample_paths: list[Path], weights_path: Path):
    """All rounds' frames with the weights the CG model and the bias learn from
    (``policy.levelled_weights`` in the weights file's ``levelled_cells``; weights files written
    before the ``connected`` column existed are used as they are)."""
    from cgflow.analysis.campaign import cv_domain, read_provenance_of, read_samples
    from cgflow.analysis.reweight import attach_weights
    from cgflow.guidance.policy import levelled_weights

    df = attach_weights(campaign, read_samples(campaign, sample_paths)[0], weights_path)
    if "connected" in df:
        lower, upper, _ = cv_domain(campaign)
        # cells held outside in this round are levelled by their outside frames, as without memory
        this_round = int(df["round"].max())
        cells = [int(c) for c, last in read_provenance_of(weights_path, "weights.parquet").get("levelled_cells", {}).items()
                 if last < this_round]
        df["weight"] = levelled_weights(df[list(campaign.system.cv_names)].to_numpy(), df["weight"].to_numpy(),
                                        df["connected"].to_numpy(), lower, upper, campaign.guidance.min_frames,
                                        remembered=cells)
    return df


def guide_round(campaign, round_index: int, model_path: Path, sample_paths: list[Path], weights_path: Path,
                out_bias: Path, out_starts: Path, out_json: Path) -> None:
    from cgflow.analysis.campaign import cv_domain, read_provenance_of
    from cgflow.models.cv_energy import load
    from cgflow.training.campaign import model_grid

    t0 = time.perf_counter()
    g, kT = campaign.guidance, campaign.sampling.kT
    names = list(campaign.system.cv_names)
    model, _ = load(model_path, names)
    grid = model_grid(campaign)
    lower, upper, periodic = cv_domain(campaign)

    df = learning_frames(campaign, sample_paths, weights_path)
    cv = df[names].to_numpy()
    F_grid, eps_grid = ensemble_at(model, grid, kT, grid.points)
    F_grid -= F_grid.min()
    _, eps_data = ensemble_at(model, grid, kT, cv)
    support = data_support(cv, lower, upper, periodic, g.min_frames)
    support_grid = support(grid.points)
    trust_grid = trust(eps_grid, g.e0, g.e1) * support_grid
    trust_data = trust(eps_data, g.e0, g.e1) * support(cv)
    if not trust_grid.any():
        from cgflow.analysis.reweight import kish

        raise RuntimeError(f"round {round_index}: the CG ensemble is trusted nowhere (eps >= guidance.e1 = "
                           f"{g.e1} kJ/mol wherever there are FG frames); raise guidance.e1 or train longer. "
                           f"The frame weights' ESS is {kish(df['weight'].to_numpy()):.0f} of {len(df)} frames: "
                           "a handful of frames with most of the weight is a reweighting problem, not a training one")

    basis = Basis(lower, upper, periodic, g.bias_basis)
    policy = fit_policy(basis, cv, df["weight"].to_numpy(), trust_data, grid.points,
                        -F_grid / (g.gamma * kT), trust_grid, kT, g.bias_steps)

    bias = BiasGrid.zeros(names, lower, [u for u in upper], periodic, g.bias_grid)
    points = bias.points
    V = basis(points) @ policy.coefficients
    F_b, eps_b = ensemble_at(model, grid, kT, points)
    sigma = trust(eps_b, g.e0, g.e1) * support(points)
    # the cap: the well-tempered fill (1 - 1/gamma) of the free-energy range over the trusted
    # region (policy.fill). The range is the larger of the CG model's and the reweighted data's:
    # a smooth model trained on few barrier frames flattens the barriers, and a cap from it alone
    # would leave them too high to cross. guidance.overfill raises it: the range's top, the
    # frontier, then keeps (1 - 1/gamma) overfill of bias, which drops to 0 across the frontier
    # guidance.barrier bounds it, as OPES's BARRIER does: the bias lowers no barrier by more, and
    # once the walkers have found everything below that level the fill stops pushing them higher
    trusted = trust_grid >= 0.5
    if (sigma >= 0.5).any() and trusted.any():
        spread = max(float(np.ptp(F_grid[trusted])),
                     data_free_energy_range(cv, df["weight"].to_numpy(), lower, upper, g.min_frames, kT))
        cap = (1 - 1 / g.gamma) * (spread + g.overfill)
        if g.barrier is not None:
            cap = min(cap, g.barrier)
        applied = fill(V, sigma, cap, F_b)
    else:
        log.warning("round %d: the CG ensemble is trusted nowhere with enough frames; the next round runs "
                    "unbiased (more frames per round, or a lower guidance.min_frames)", round_index)
        applied = np.zeros_like(V)
    hills_path = Path(sample_paths[-1]).parent / HILLS_FILE
    if campaign.guidance.hills["height"] and hills_path.is_file():
        # where the CG ensemble is not trusted yet, the bias the walkers built with hills in this
        # round stays: without it a basin found late in a round is a pit again in the next. Read at
        # this grid's points: the hills grew on the round's own bias, which in round 0 is
        # guidance.initial_bias, on a grid of its own
        applied = applied + (1 - sigma) * RoundStates.load(hills_path).grids[-1](points)
    values = applied.reshape(bias.values.shape)
    for axis, p in enumerate(periodic):
        if p:
            first = np.take(values, [0], axis=axis)
            values = np.concatenate([np.delete(values, -1, axis=axis), first], axis=axis)
    bias = BiasGrid(bias.names, bias.lower, bias.upper, bias.periodic, values,
                    {"round": round_index, "gamma": g.gamma, "e0": g.e0, "e1": g.e1, "kT_kJmol": kT,
                     "config_hash": campaign.hash})
    bias.save(out_bias)

    # the two PMF estimates that must agree at convergence: F_cg and -V - kT ln p_target
    V_grid = basis(grid.points) @ policy.coefficients
    F_policy = -V_grid + F_grid / g.gamma
    region = trust_grid >= 1.0
    diff = (F_policy - F_grid)[region]
    gap = float(np.sqrt(np.mean((diff - diff.mean()) ** 2)) / kT) if region.any() else None

    # the target the walkers are shared out by: where frames are thin the CG model is guessing,
    # so there the free energy is taken as the top of the trusted range (what the bias fills
    # up to), which leaves room for walkers at the frontier
    F_top = float(F_grid[trusted].max()) if trusted.any() else float(F_grid.max())
    target = np.exp(-(support_grid * F_grid + (1 - support_grid) * F_top) / (g.gamma * kT))
    starts, seeded = _write_starts(campaign, round_index, df, eps_data, grid, target, out_starts,
                                   Path(sample_paths[-1]).parent)
    result = {
        "round": round_index,
        "gap_kT": gap,
        "trusted_fraction": float(np.mean(trust_grid >= 1.0)),
        "omega_kJmol": policy.omega_kJmol,
        "policy_iterations": policy.iterations,
        "biased_ess": policy.biased_ess,
        "max_bias_kJmol": float(values.max()),
        # a basin entered (or left) one way only: from the round the walkers cross into it to the
        # round TRAM connects it, its depth for guidance is the levelling's guess
        "basin_outside": bool("connected" in df and held_outside(cv, df["connected"].to_numpy(), lower, upper,
                                                                 g.min_frames).any()),
        # the cells levelled now: held outside, or within guidance.level_memory rounds of it
        "levelled_cells": len(read_provenance_of(weights_path, "weights.parquet").get("levelled_cells", {})),
        "reseeded_walkers": int(seeded.sum()),
        "config_hash": campaign.hash,
        "seed": campaign.seed,
        "versions": package_versions(),
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out_json, result)
    log.info("round %d: bias up to %.1f kJ/mol on %.0f%% of the CV domain, gap F_cg vs policy %.3g kT, "
             "%d walkers re-seeded", round_index, result["max_bias_kJmol"], 100 * result["trusted_fraction"],
             gap if gap is not None else float("nan"), result["reseeded_walkers"])


def _write_starts(campaign, round_index, df, eps, grid, target, out_starts, round_dir: Path):
    """Start positions of round k+1's walkers from round k's frames (see guidance.seeding);
    ``eps`` is the ensemble disagreement at each frame of ``df``, ``target`` the well-tempered
    target density on the model grid's points."""
    from cgflow.analysis.campaign import cv_domain
    from cgflow.analysis.tram import markov_states
    from cgflow.guidance.seeding import cell_quotas, choose_starts, frontier_scores
    from cgflow.io import write_npz

    names = list(campaign.system.cv_names)
    g = campaign.guidance
    is_latest = (df["round"] == round_index).to_numpy()
    latest = df[is_latest].reset_index(drop=True)
    cv, all_cv = latest[names].to_numpy(), df[names].to_numpy()
    lower, upper, periodic = cv_domain(campaign)
    cells = lambda points, n: markov_states(points, lower, upper, n)  # noqa: E731
    counts = np.bincount(cells(all_cv, g.model_grid), minlength=g.model_grid ** len(names))
    scores = frontier_scores(eps[is_latest], counts[cells(cv, g.model_grid)])
    # a frame past a non-periodic CV's edge scores high (the model extrapolates there, its edge
    # cell is thin) but is no start: the model and the bias end at the edge
    outside = np.zeros(len(cv), dtype=bool)
    for i, (lo, hi, p) in enumerate(zip(lower, upper, periodic)):
        if not p:
            outside |= (cv[:, i] < lo) | (cv[:, i] > hi)
    scores[outside] = -1.0

    n_cells = g.seed_cells ** len(names)
    visited = np.bincount(cells(all_cv, g.seed_cells), minlength=n_cells) > 0
    point_cells = cells(grid.points, g.seed_cells)
    n_walkers = campaign.sampling.walkers
    quotas = cell_quotas(point_cells, target * visited[point_cells], n_cells, n_walkers)
    last = latest.groupby("walker")["step"].idxmax().reindex(range(n_walkers)).to_numpy()
    rng = np.random.default_rng([campaign.seed, round_index, 11])
    frames, seeded = choose_starts(last, scores, cells(cv, g.seed_cells), quotas, g.seed_fraction, rng)
    chosen = latest.iloc[frames]
    positions = _positions(campaign, chosen, round_dir)
    write_npz(out_starts, positions=positions, source_walker=chosen["walker"].to_numpy(),
              source_step=chosen["step"].to_numpy(), reseeded=seeded)
    return positions, seeded


def _positions(campaign, frames, round_dir: Path):
    """FG coordinates (walkers, particles, 3; nm) of the chosen frames of the round in ``round_dir``."""
    if campaign.system.is_toy:
        return frames[["x_nm", "y_nm", "z_nm"]].to_numpy()[:, None, :]
    import mdtraj as md

    top = str(round_dir / "traj" / "topology.pdb")
    out = []
    for walker, step in zip(frames["walker"], frames["step"]):
        frame = int(step) // campaign.sampling.report_interval - 1
        traj = md.load_frame(str(round_dir / "traj" / f"walker-{int(walker):04d}.dcd"), frame, top=top)
        out.append(traj.xyz[0].astype(float))
    return np.stack(out)
