"""Workflow entry points of the ccg stage: ``cgflow reconstruct`` and ``cgflow ccg-fes``.

``reconstruct`` trains the flow and writes ``flow.pt`` + ``flow.json`` (hyper-parameters,
geometry, standardisation, provenance, training cost) and ``train.json`` (the loss curve).
``ccg-fes`` loads it and writes ``ccg_fes.csv`` (F, error, mean force, ESS, trust flag and,
for toys, the exact pointwise PMF; for alanine dipeptide the reference's F of the bin holding
each point), ``diagnostics.csv`` (per-point weight statistics), ``ccg_fes.png``, for alanine
dipeptide ``backmapped.dcd`` + ``backmapped.pdb`` (all-atom structures resampled from the flow,
:func:`cgflow.reconstruction.backmap.resample_ensemble`), and ``summary.json`` (errors vs the
exact PMF or the reference over trusted points where F < the analysis cutoff, untrusted counts,
energy evaluations, wall times, provenance).

Systems: toys with linear CVs (:class:`~cgflow.reconstruction.energy.ToyEnergy`) and alanine
dipeptide with CVs (phi, psi) (:class:`~cgflow.reconstruction.alanine.ZMatrixEnergy` over
:func:`~cgflow.reconstruction.alanine.backbone_map`: 46 generated internal coordinates).

Seeds: the flow's initial weights use the campaign seed, training ``seed + 1`` and the
estimator ``seed + 2``, so each stream is reproducible on its own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cgflow.io import write_json

log = logging.getLogger(__name__)


def estimation_grid(campaign) -> np.ndarray:
    """The CV points (G, k): centres of ``ccg.estimate.grid_points`` equal bins per CV over the CV
    domain (the analysis domain; with grid_points = analysis.bins, the fes.csv bin centres)."""
    from cgflow.analysis.campaign import cv_domain

    lower, upper, _ = cv_domain(campaign)
    axes = []
    for lo, hi, n in zip(lower, upper, campaign.ccg.grid_points):
        edges = np.linspace(lo, hi, n + 1)
        axes.append(0.5 * (edges[1:] + edges[:-1]))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def build_energy(campaign):
    """The torch energy U(s, y) of the campaign's system: ToyEnergy, or ZMatrixEnergy for alanine."""
    if campaign.system.is_toy:
        from cgflow.reconstruction.energy import ToyEnergy

        return ToyEnergy(campaign.system.build(), campaign.sampling.kT)
    from cgflow.reconstruction.alanine import ZMatrixEnergy, backbone_map

    ala = campaign.system.build()
    system = ala.create_system()
    return ZMatrixEnergy(backbone_map(system, ala.initial_positions()), system, campaign.sampling.kT)


def cv_unit(campaign) -> str:
    """The CVs' unit in column names: nm for toys, rad for dihedrals."""
    return "nm" if campaign.system.is_toy else "rad"


def new_flow(campaign, energy):
    """An untrained flow whose standardisation comes from the box (y) and the CV domain (s)."""
    import torch

    from cgflow.analysis.campaign import cv_domain
    from cgflow.reconstruction.flow import ConditionalFlow

    c = campaign.ccg
    torch.manual_seed(campaign.seed)
    if not campaign.system.is_toy:  # the map standardises its codes already; (phi, psi) as sin/cos
        return ConditionalFlow(energy.n_hidden, energy.n_cvs, transforms=c.transforms, hidden=c.hidden, bins=c.bins,
                               passes=c.passes, periodic=[True] * energy.n_cvs)
    g = energy.geometry
    y_lo, y_hi = g.hidden_range()
    s_lo, s_hi, _ = (np.asarray(v, dtype=float) for v in cv_domain(campaign))
    return ConditionalFlow(g.n_hidden, g.n_cvs, transforms=c.transforms, hidden=c.hidden, bins=c.bins,
                           y_loc=(y_lo + y_hi) / 2, y_scale=(y_hi - y_lo) / 4,
                           s_loc=(s_lo + s_hi) / 2, s_scale=(s_hi - s_lo) / np.sqrt(12), passes=c.passes)


def fg_pairs(campaign, geometry, samples: list[Path]) -> tuple[np.ndarray, np.ndarray | None]:
    """(s, y) of every FG frame of ``samples`` (all rounds); for a molecule (s, None), s from the
    CV columns (its y would need the trajectories; the config allows no NLL there). A bias acts
    on s only, so p(y|s) of biased frames is still the unbiased conditional: no reweighting is
    needed for either use."""
    from cgflow.analysis.campaign import read_samples

    frames, _ = read_samples(campaign, samples)
    if not campaign.system.is_toy:
        return frames[list(campaign.system.cv_names)].to_numpy(dtype=float), None
    r = frames[[f"{c}_nm" for c in geometry.coordinates]].to_numpy(dtype=float)
    s, y = geometry.split(r)
    return s, y


def _provenance(campaign, **extra) -> dict:
    from cgflow.io import package_versions

    return {"config_hash": campaign.hash, "stage_hash": campaign.stage_hash("ccg"), "seed": campaign.seed,
            "versions": package_versions(), **extra}


def write_flow(campaign, out_dir: Path, samples: list[Path] | None = None) -> dict:
    """Train the reconstruction flow; write flow.pt, flow.json and train.json into ``out_dir``."""
    import torch

    from cgflow.analysis.campaign import cv_domain
    from cgflow.reconstruction.flow import save_flow
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train

    torch.set_num_threads(1)
    c = campaign.ccg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    energy = build_energy(campaign)
    flow = new_flow(campaign, energy)
    pairs = fg_pairs(campaign, energy.geometry, samples) if c.needs_fg_samples else None
    if c.conditioning == "samples":
        conditioning = Conditioning.from_samples(pairs[0])
    else:
        lower, upper, _ = cv_domain(campaign)
        conditioning = Conditioning.uniform(lower, upper)
    settings = TrainSettings(steps=c.steps, batch=c.batch, lr=c.lr, nll_weight=c.nll_weight,
                             checkpoint_interval=c.checkpoint_interval,
                             log_interval=max(1, min(100, c.steps // 20)), seed=campaign.seed + 1)
    log.info("training q(y|s): %d generated coordinate(s) given %s; %d steps x %d, conditioning %s",
             energy.n_hidden, ", ".join(campaign.system.cv_names), c.steps, c.batch, conditioning.kind)
    result = train(flow, energy, conditioning, settings, campaign.sampling.kT,
                   nll_data=pairs if c.nll_weight > 0 else None, checkpoint=out_dir / "flow.checkpoint.pt",
                   signature_extra={"stage_hash": campaign.stage_hash("ccg")})
    cost = {"energy_evaluations": result["energy_evaluations"], "wall_s": result["wall_s"], "steps": c.steps,
            "fg_frames_used": 0 if pairs is None else int(len(pairs[0])), "resumed_at_step": result["resumed_at"]}
    meta = {"system": campaign.system.type, "temperature_K": campaign.sampling.temperature, "kT_kJmol": campaign.sampling.kT,
            "geometry": energy.geometry.to_json(), "conditioning": conditioning.kind, "training": cost,
            "provenance": _provenance(campaign)}
    save_flow(flow, out_dir / "flow.pt", out_dir / "flow.json", meta)
    write_json(out_dir / "train.json", {"history": result["history"], **cost})
    log.info("flow trained in %.1f s with %d energy evaluations", result["wall_s"], result["energy_evaluations"])
    return meta


def reference_at(campaign, reference_csv: Path, grid: np.ndarray) -> np.ndarray:
    """The reference F (kJ/mol) of the analysis bin holding each grid point (G, k); NaN where the
    reference has none. With grid_points = analysis.bins the points are the bin centres."""
    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import read_fes_csv

    fes = read_fes_csv(reference_csv, campaign.system.cv_names)
    edges = cv_edges(campaign)
    index = tuple(np.clip(np.searchsorted(e, grid[:, j], side="right") - 1, 0, len(e) - 2)
                  for j, e in enumerate(edges))
    return np.asarray(fes.F, dtype=float)[index]


def write_ccg_fes(campaign, flow_pt: Path, flow_json: Path, out_dir: Path, reference: Path | None = None) -> dict:
    """Estimate F on the grid from the flow; write ccg_fes.csv, diagnostics.csv, ccg_fes.png,
    summary.json and, for alanine dipeptide, backmapped.dcd + backmapped.pdb.

    ``reference``: the campaign's reference.csv (molecules; toys use pointwise quadrature)."""
    import torch

    from cgflow.io import write_text
    from cgflow.reconstruction.energy import exact_pmf
    from cgflow.reconstruction.flow import load_flow
    from cgflow.reconstruction.free_energy import EstimateSettings, ccg_free_energy, compare_to_exact
    from cgflow.reconstruction.plots import plot_ccg_fes

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    c, kT = campaign.ccg, campaign.sampling.kT
    out_dir = Path(out_dir)
    flow, info = load_flow(flow_pt, flow_json)
    energy = build_energy(campaign)
    if info.get("geometry") != energy.geometry.to_json():
        raise ValueError(f"{flow_json} was trained for another system or CV; rerun cgflow reconstruct")
    names = list(campaign.system.cv_names)
    grid = estimation_grid(campaign)
    settings = EstimateSettings(samples_per_point=c.samples_per_point, min_ess_fraction=c.min_ess_fraction,
                                min_ess=c.min_ess, max_pareto_k=c.max_pareto_k, bootstrap=c.bootstrap,
                                seed=campaign.seed + 2)
    frame = ccg_free_energy(flow, energy, grid, kT, settings, names, cv_unit=cv_unit(campaign))
    estimate_evaluations = energy.evaluations
    estimate_wall = time.perf_counter() - t0
    cutoff = campaign.analysis.rmse_cutoff_kT
    comparison, reference_kind = None, None
    if campaign.system.is_toy and energy.n_hidden <= 2:
        frame["F_exact_kJmol"] = exact_pmf(energy.toy, grid, kT)
        comparison = compare_to_exact(frame, frame["F_exact_kJmol"].to_numpy(), kT, cutoff)
        reference_kind = "pointwise quadrature"
    elif reference is not None:
        frame["F_ref_kJmol"] = reference_at(campaign, reference, grid)
        comparison = compare_to_exact(frame, frame["F_ref_kJmol"].to_numpy(), kT, cutoff)
        reference_kind = campaign.analysis.reference
    fes_columns = [col for col in frame.columns if col not in ("samples", "outside_fraction", "pareto_k")]
    write_text(out_dir / "ccg_fes.csv", frame[fes_columns].to_csv(index=False, float_format="%.6g"))
    diag_columns = names + ["ess", "ess_fraction", "pareto_k", "trusted", "samples", "outside_fraction", "F_err_kJmol"]
    write_text(out_dir / "diagnostics.csv", frame[diag_columns].to_csv(index=False, float_format="%.6g"))
    plot_ccg_fes(frame, names, out_dir / "ccg_fes.png", kT, c.min_ess_fraction, cutoff,
                 title=f"{campaign.name}: CCG free energy ({int((~frame.trusted).sum())} untrusted points)")
    backmapped = None if campaign.system.is_toy else write_backmapped(campaign, flow, energy, frame, grid, out_dir)
    untrusted = frame.loc[~frame.trusted, names]
    training = info.get("training", {})
    summary = {
        "grid_points": len(frame),
        "samples_per_point": c.samples_per_point,
        "n_untrusted": int((~frame.trusted).sum()),
        "untrusted_points": untrusted.to_dict(orient="records"),
        "ess_fraction_min": float(frame.ess_fraction.min()),
        "ess_fraction_median": float(frame.ess_fraction.median()),
        "min_ess_fraction": c.min_ess_fraction,
        "min_ess": c.min_ess,
        "max_pareto_k": c.max_pareto_k,
        "pareto_k_max": float(frame.pareto_k.max()),
        "reference": reference_kind,
        ("vs_exact" if campaign.system.is_toy else "vs_reference"): comparison,
        "rmse_vs_exact_kT": comparison["rmse_kT"] if comparison and campaign.system.is_toy else None,
        "max_abs_error_vs_exact_kT": comparison["max_abs_error_kT"] if comparison and campaign.system.is_toy else None,
        "rmse_vs_reference_kJmol": comparison["rmse_kT"] * kT if comparison else None,
        "backmapped": backmapped,
        "energy_evaluations_training": training.get("energy_evaluations"),
        "energy_evaluations_estimate": estimate_evaluations,
        "energy_evaluations_backmap": energy.evaluations - estimate_evaluations,
        "energy_evaluations_total": (training.get("energy_evaluations") or 0) + energy.evaluations,
        "fg_md_steps": 0,
        "fg_frames_used": training.get("fg_frames_used", 0),
        "training_wall_s": training.get("wall_s"),
        "estimate_wall_s": estimate_wall,
        "provenance": _provenance(campaign, flow=info.get("provenance")),
    }
    if not campaign.system.is_toy:
        summary["ess_fraction_median_low_F"] = _median_low_F(frame, kT, cutoff)
    write_json(out_dir / "summary.json", summary)
    if comparison is not None:
        log.info("CCG vs %s: RMSE %.3f kT (%.2f kJ/mol), max |dF| %.3f kT over %d trusted points (F < %g kT); "
                 "%d untrusted", reference_kind, comparison["rmse_kT"], comparison["rmse_kT"] * kT,
                 comparison["max_abs_error_kT"], comparison["n_compared"], cutoff, summary["n_untrusted"])
    return summary


def _median_low_F(frame, kT: float, cutoff_kT: float) -> float | None:
    """Median ESS / M over the trusted points with F below the cutoff (where F matters)."""
    low = frame.trusted & (frame.F_kJmol < cutoff_kT * kT)
    return float(frame.ess_fraction[low].median()) if low.any() else None


def write_backmapped(campaign, flow, energy, frame, grid: np.ndarray, out_dir: Path) -> dict:
    """Resample all-atom structures from the flow over the trusted grid cells with F below
    ``ccg.backmap.max_F_kJmol`` and write backmapped.dcd + backmapped.pdb; return their summary."""
    from cgflow.analysis.campaign import cv_domain
    from cgflow.reconstruction.backmap import resample_ensemble, write_structures

    c, kT = campaign.ccg, campaign.sampling.kT
    F = frame.F_kJmol.to_numpy(dtype=float)
    use = frame.trusted.to_numpy(dtype=bool) & (F < c.backmap_max_F)
    if not use.any():
        use = frame.trusted.to_numpy(dtype=bool) if frame.trusted.any() else np.isfinite(F)
        log.warning("no trusted grid point has F < %g kJ/mol; backmapping from %d points", c.backmap_max_F, use.sum())
    lower, upper, _ = cv_domain(campaign)
    cell = (np.asarray(upper) - np.asarray(lower)) / np.asarray(c.grid_points)
    rng = np.random.default_rng(campaign.seed + 3)
    import torch

    torch.manual_seed(campaign.seed + 3)
    result = resample_ensemble(flow, energy, grid[use], F[use], cell, kT, c.backmap_frames, c.backmap_proposals, rng)
    write_structures(result["xyz"], campaign.system.build().mdtraj_topology(), out_dir / "backmapped.dcd",
                     out_dir / "backmapped.pdb")
    out = {"frames": c.backmap_frames, "proposals": result["proposals"], "grid_points_used": int(use.sum()),
           "max_F_kJmol": c.backmap_max_F, "proposal_ess": result["ess"], "distinct_frames": result["distinct_frames"],
           "mean_energy_kJmol": float(result["energy_kJmol"].mean()), "energy_evaluations": result["evaluations"]}
    log.info("backmapped %d frames (%d distinct) from %d proposals over %d grid cells; proposal ESS %.1f",
             out["frames"], out["distinct_frames"], out["proposals"], out["grid_points_used"], out["proposal_ess"])
    return out
