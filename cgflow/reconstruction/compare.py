"""The CCG free energy beside the FG campaign's: both against the reference, and their costs.

The campaign's ``fes.csv`` holds the rounds' reweighted FES and the reference (exact quadrature
integrated over each bin, or a long metadynamics run) on the analysis grid; ``ccg_fes.csv``
holds the flow's F at grid points (by default the same bin centres). This puts them in one
table and one figure, scores the CCG F against the reference over its trusted points, and
sets the energy evaluations it cost beside the FG MD steps the rounds used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _on_ccg_grid(ccg, fes, names: list[str]):
    """The campaign FES columns at the CCG grid points (same grid, or 1-D interpolation)."""
    columns = ("F_kJmol", "F_err_kJmol", "F_ref_kJmol")
    if len(ccg) == len(fes) and all(np.allclose(ccg[n].to_numpy(), fes[n].to_numpy(), atol=1e-6) for n in names):
        return {c: fes[c].to_numpy(dtype=float) for c in columns if c in fes}
    if len(names) != 1:
        raise ValueError("ccg.estimate.grid_points differs from analysis.bins on a 2-D CV space: set them equal "
                         "so the CCG and campaign surfaces share their points")
    x, xs = ccg[names[0]].to_numpy(dtype=float), fes[names[0]].to_numpy(dtype=float)
    return {c: np.interp(x, xs, fes[c].to_numpy(dtype=float), left=np.nan, right=np.nan) for c in columns if c in fes}


def write_comparison(campaign, ccg_csv: Path, ccg_summary: Path, fes_csv: Path, campaign_summary: Path,
                     out_dir: Path) -> dict:
    """Write ccg/comparison.csv, comparison.json and comparison.png; return the json's content."""
    import pandas as pd

    from cgflow.io import write_json, write_text
    from cgflow.reconstruction.free_energy import compare_to_exact

    kT, cutoff = campaign.sampling.kT, campaign.analysis.rmse_cutoff_kT
    names = list(campaign.system.cv_names)
    ccg = pd.read_csv(ccg_csv)
    fg = _on_ccg_grid(ccg, pd.read_csv(fes_csv), names)
    table = ccg[names].copy()
    table["F_ccg_kJmol"] = ccg["F_kJmol"]
    table["F_ccg_err_kJmol"] = ccg["F_err_kJmol"]
    table["ccg_trusted"] = ccg["trusted"].astype(bool)
    table["F_rounds_kJmol"] = fg["F_kJmol"]
    table["F_rounds_err_kJmol"] = fg["F_err_kJmol"]
    if "F_ref_kJmol" in fg:
        table["F_ref_kJmol"] = fg["F_ref_kJmol"]
    ccg_cost = json.loads(Path(ccg_summary).read_text())
    fg_summary = json.loads(Path(campaign_summary).read_text())
    result = {
        "cutoff_kT": cutoff,
        "ccg_vs_reference": None,
        "rounds_rmse_vs_reference_kT": fg_summary.get("rmse_vs_reference_kT"),
        "rounds_reference_coverage": fg_summary.get("reference_coverage"),
        "ccg_vs_rounds_rmse_kT": None,
        "ccg_energy_evaluations": ccg_cost.get("energy_evaluations_total"),
        "rounds_fg_steps": fg_summary.get("fg_steps_total"),
        "reference": campaign.analysis.reference,
    }
    # a toy's pointwise quadrature where ccg_fes has it: the campaign's reference is bin-integrated
    # (what a histogram estimates), which differs from F at a bin centre by up to ~0.1 kT in a well
    reference = ccg["F_exact_kJmol"] if "F_exact_kJmol" in ccg else table.get("F_ref_kJmol")
    if reference is not None and np.isfinite(reference).any():
        frame = pd.DataFrame({"F_kJmol": table["F_ccg_kJmol"], "trusted": table["ccg_trusted"]})
        result["ccg_vs_reference"] = compare_to_exact(frame, reference.to_numpy(dtype=float), kT, cutoff)
        result["ccg_reference"] = "pointwise quadrature" if "F_exact_kJmol" in ccg else "campaign reference"
    both = table["ccg_trusted"] & np.isfinite(table["F_rounds_kJmol"]) & np.isfinite(table["F_ccg_kJmol"])
    if both.any():
        diff = (table["F_ccg_kJmol"] - table["F_rounds_kJmol"])[both]
        result["ccg_vs_rounds_rmse_kT"] = float(np.sqrt(np.mean((diff - diff.mean()) ** 2)) / kT)
        result["ccg_vs_rounds_points"] = int(both.sum())
    write_text(out_dir / "comparison.csv", table.to_csv(index=False, float_format="%.6g"))
    write_json(out_dir / "comparison.json", result)
    _plot(table, names, out_dir / "comparison.png", kT, cutoff, campaign.name)
    cmp = result["ccg_vs_reference"] or {}
    log.info("CCG vs reference: RMSE %s kT (%s trusted points); rounds vs reference: RMSE %s kT; "
             "%s energy evaluations vs %s FG steps", cmp.get("rmse_kT"), cmp.get("n_compared"),
             result["rounds_rmse_vs_reference_kT"], result["ccg_energy_evaluations"], result["rounds_fg_steps"])
    return result


def _plot(table, names: list[str], path: Path, kT: float, cutoff_kT: float, campaign_name: str) -> None:
    from matplotlib.figure import Figure

    from cgflow.analysis.plots import F_LABEL, _save

    title = f"{campaign_name}: CCG (flow only) vs the rounds' FES vs the reference"
    shown = table.copy()
    shown.loc[~shown["ccg_trusted"], "F_ccg_kJmol"] = np.nan
    columns = [("F_ccg_kJmol", "CCG"), ("F_rounds_kJmol", "rounds (reweighted FG)"), ("F_ref_kJmol", "reference")]
    columns = [(c, label) for c, label in columns if c in shown]
    if len(names) == 1:
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        rows = shown.sort_values(names[0])
        for (c, label), style in zip(columns, ("C0.-", "C1.-", "k--")):
            F = rows[c].to_numpy(dtype=float)
            ax.plot(rows[names[0]], F - np.nanmin(F), style, label=label)
        ax.set_ylim(-0.5, 1.5 * cutoff_kT * kT)
        ax.set_xlabel(names[0])
        ax.set_ylabel(F_LABEL)
        ax.legend(fontsize="small")
    else:
        x, y = (np.unique(shown[n].to_numpy(dtype=float)) for n in names)
        fig = Figure(figsize=(4.2 * len(columns), 3.8), layout="constrained")
        for ax, (c, label) in zip(np.atleast_1d(fig.subplots(1, len(columns))), columns):
            grid = shown.pivot_table(index=names[1], columns=names[0], values=c, dropna=False).reindex(
                index=y, columns=x).to_numpy(dtype=float)
            grid = grid - np.nanmin(grid)
            mesh = ax.pcolormesh(x, y, np.where(grid < 1.5 * cutoff_kT * kT, grid, np.nan), shading="nearest")
            fig.colorbar(mesh, ax=ax, label=F_LABEL)
            ax.set_title(label)
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
    fig.suptitle(title)
    _save(fig, path)
