"""The analysis actions of a campaign: reference FES, final FES + summary.json, plots.

The CV grid is one function of the config (:func:`cv_edges`) so that the reference, the
estimate and any comparison always share bins.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cgflow.analysis.fes import compare_to_reference, fes_frame, histogram_fes, read_fes_csv, write_fes_csv
from cgflow.io import package_versions, write_json

log = logging.getLogger(__name__)


def cv_edges(campaign) -> list[np.ndarray]:
    """Bin edges per CV: over the box's CV range for toys, (-pi, pi] for dihedrals."""
    bins = campaign.analysis.bins
    system = campaign.system
    if system.is_toy:
        ranges = system.build().cv_range()
    else:
        ranges = [(-np.pi, np.pi)] * len(system.cvs)
    return [np.linspace(lo, hi, n + 1) for (lo, hi), n in zip(ranges, bins)]


def write_reference(campaign, out: Path) -> None:
    """Exact quadrature for toys, or the configured reference file checked against our grid."""
    edges = cv_edges(campaign)
    names = campaign.system.cv_names
    ref = campaign.analysis.reference
    if ref == "exact":
        t0 = time.perf_counter()
        F = campaign.system.build().reference_fes(edges, campaign.sampling.temperature)
        log.info("exact PMF by quadrature in %.2f s", time.perf_counter() - t0)
    else:
        fes = read_fes_csv(ref, names)
        if any(len(a) != len(b) or not np.allclose(a, b, atol=1e-6) for a, b in zip(fes.edges, edges)):
            raise ValueError(f"the reference {ref} is on another grid than analysis.bins gives; "
                             "write it on the same bins or change analysis.bins")
        F = fes.F
    frame = fes_frame(_placeholder(edges, F), names)
    write_fes_csv(frame[list(names) + ["F_kJmol"]], out)


def _placeholder(edges, F):
    from cgflow.analysis.fes import FES

    return FES(edges=tuple(edges), F=F, F_err=np.full_like(F, np.nan))


def read_samples(paths: list[Path]):
    """All rounds' samples in one DataFrame with a ``round`` column, and their provenance."""
    import pandas as pd

    from cgflow.sampling.round import read_provenance

    frames, prov = [], []
    for path in paths:
        p = read_provenance(path)
        df = pd.read_parquet(path)
        df.insert(0, "round", p.get("round", len(prov)))
        frames.append(df)
        prov.append(p)
    return pd.concat(frames, ignore_index=True), prov


def write_fes(campaign, samples: list[Path], reference: Path | None, out: Path, summary: Path) -> None:
    t0 = time.perf_counter()
    names = list(campaign.system.cv_names)
    kT = campaign.sampling.kT
    df, prov = read_samples(samples)
    blocks = df["round"].to_numpy() * (campaign.sampling.walkers + 1) + df["walker"].to_numpy()
    fes = histogram_fes(df[names].to_numpy(), cv_edges(campaign), kT, blocks=blocks,
                        n_bootstrap=campaign.analysis.bootstrap, seed=campaign.seed)
    ref = read_fes_csv(reference, names) if reference else None
    write_fes_csv(fes_frame(fes, names, ref), out)
    result = {
        "campaign": campaign.name,
        "system": campaign.system.potential or campaign.system.type,
        "cvs": names,
        "units": {"F": "kJ/mol", "rmse": "kT", "time": "s"},
        "temperature_K": campaign.sampling.temperature,
        "kT_kJmol": kT,
        "rmse_vs_reference_kT": None,
        "reference_coverage": None,
        "fg_steps_total": int(sum(p["fg_steps"] for p in prov)),
        "n_frames": len(df),
        "platforms": sorted({p["platform"] for p in prov}),
    }
    if ref is not None:
        cmp = compare_to_reference(fes, ref, kT, campaign.analysis.rmse_cutoff_kT)
        result["rmse_vs_reference_kT"] = cmp["rmse_kT"]
        result["reference_coverage"] = cmp["coverage"]
        result["reference_bins_below_cutoff"] = cmp["n_bins"]
        result["rmse_cutoff_kT"] = campaign.analysis.rmse_cutoff_kT
    result["wall_s"] = float(sum(p["wall_s"] for p in prov) + time.perf_counter() - t0)
    result["provenance"] = {"config_hash": campaign.hash, "seed": campaign.seed,
                            "versions": package_versions(), "rounds": prov}
    write_json(summary, result)
    log.info("FES: rmse vs reference %s kT, coverage %s", result["rmse_vs_reference_kT"], result["reference_coverage"])


def write_plots(campaign, fes_csv: Path, samples: list[Path], out_dir: Path) -> None:
    import pandas as pd

    from cgflow.analysis.plots import plot_cv_histogram, plot_fes, plot_walker_traces

    unit = "nm" if campaign.system.is_toy else "rad"
    labels = {name: f"{name} ({unit})" for name in campaign.system.cv_names}
    names = list(labels.values())
    df, _ = read_samples(samples)
    df = df.rename(columns=labels)
    title = f"{campaign.name}: {campaign.system.potential or campaign.system.type}"
    plot_fes(pd.read_csv(fes_csv).rename(columns=labels), names, out_dir / "fes.png", title=title)
    plot_cv_histogram(df, names, out_dir / "cv_histogram.png")
    plot_walker_traces(df, names, out_dir / "walker_traces.png")
