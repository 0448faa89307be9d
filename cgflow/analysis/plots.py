"""Figures for the report: free-energy surfaces, CV histograms, walker traces.

Figures are drawn on the Agg canvas of a bare :class:`matplotlib.figure.Figure`, never through
pyplot: no global backend switch, no figure registry to leak, safe in parallel workflow jobs.
Each one is written atomically, so a report never picks up half a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cgflow.io import atomic_path

DPI = 120
F_LABEL = "F (kJ/mol)"
OUTSIDE_LABEL = "outside TRAM's connected set"


def plot_fes(frame, cv_names, path: str | os.PathLike, title: str = "") -> None:
    """Plot a :func:`~cgflow.analysis.fes.fes_frame`; its reference too when it has ``F_ref_kJmol``.

    1-D: F with a ±(bootstrap standard error) band, the reference dashed. 2-D: filled contours
    of F, and beside it the reference and F − reference; empty (NaN) bins stay blank. Bins whose
    weight is mostly outside TRAM's connected set (``connected_share`` < 0.5) are crossed (1-D)
    or hatched (2-D): their depth is not yet pinned by transitions.
    """
    cv_names = list(cv_names)
    if len(cv_names) == 1:
        fig = _plot_fes_1d(frame, cv_names[0])
    elif len(cv_names) == 2:
        fig = _plot_fes_2d(frame, cv_names)
    else:
        raise ValueError(f"plot_fes draws 1-D and 2-D surfaces, not {len(cv_names)}-D")
    fig.suptitle(title or "Free-energy surface")
    _save(fig, path)


def _plot_fes_1d(frame, cv: str):
    from matplotlib.figure import Figure

    rows = frame.sort_values(cv)
    x, F, err = (rows[c].to_numpy(dtype=float) for c in (cv, "F_kJmol", "F_err_kJmol"))
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(x, F - err, F + err, color="C0", alpha=0.3, linewidth=0, label="± bootstrap s.e.")
    ax.plot(x, F, color="C0", marker=".", label="F")
    outside = _outside_connected(rows)
    if outside.any():
        ax.plot(x[outside], F[outside], "x", color="C3", label=OUTSIDE_LABEL)
    if "F_ref_kJmol" in rows:
        ax.plot(x, rows["F_ref_kJmol"].to_numpy(dtype=float), "k--", label="reference")
    ax.set_xlabel(cv)
    ax.set_ylabel(F_LABEL)
    ax.legend()
    return fig


def _plot_fes_2d(frame, cv_names: list[str]):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    from cgflow.analysis.fes import fes_from_frame

    fes = fes_from_frame(frame, cv_names)
    outside = _outside_connected(frame.sort_values(cv_names, kind="stable")).reshape(fes.F.shape)
    panels = [("F", fes.F)]
    if "F_ref_kJmol" in frame:
        F_ref = fes_from_frame(frame, cv_names, "F_ref_kJmol").F
        panels += [("reference", F_ref), ("F − reference", fes.F - F_ref)]
    top = max((np.nanmax(F) for _, F in panels[:2] if np.isfinite(F).any()), default=1.0)
    fig = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    x, y = fes.centers
    for k, (name, Z) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        if name == "F − reference":
            span = np.nanmax(np.abs(Z)) if np.isfinite(Z).any() else 1.0
            levels, cmap = MaxNLocator(20, symmetric=True).tick_values(-span, span), "RdBu_r"
        else:
            levels, cmap = MaxNLocator(20).tick_values(0.0, top), "viridis"
        filled = ax.contourf(x, y, np.ma.masked_invalid(Z).T, levels=levels, cmap=cmap)
        fig.colorbar(filled, ax=ax, label=f"{name} (kJ/mol)")
        if name != "reference" and outside.any():
            ax.contourf(x, y, outside.T.astype(float), levels=[0.5, 1.5], colors="none", hatches=["////"])
            if k == 0:
                ax.legend(handles=[Patch(facecolor="none", hatch="////", label=OUTSIDE_LABEL)], fontsize="small")
        ax.set_xlabel(cv_names[0])
        ax.set_ylabel(cv_names[1])
        ax.set_title(name)
    return fig


def _outside_connected(frame) -> np.ndarray:
    """Per row of a FES frame: :func:`~cgflow.analysis.fes.mostly_outside` (none without ``connected_share``)."""
    from cgflow.analysis.fes import mostly_outside

    if "connected_share" not in frame:
        return np.zeros(len(frame), dtype=bool)
    return mostly_outside(frame["connected_share"].to_numpy(dtype=float))


def plot_cv_histogram(samples, cv_names, path: str | os.PathLike, bins: int = 60) -> None:
    """Histogram of the CV columns of ``samples``: one panel per CV, or a 2-D histogram for two CVs."""
    from matplotlib.figure import Figure

    cv_names = list(cv_names)
    values = samples[cv_names].dropna()
    if len(cv_names) == 2:
        fig = Figure(figsize=(6.0, 4.8), layout="constrained")
        ax = fig.add_subplot()
        *_, image = ax.hist2d(values[cv_names[0]], values[cv_names[1]], bins=bins, cmin=1, cmap="viridis")
        fig.colorbar(image, ax=ax, label="samples per bin")
        ax.set_xlabel(cv_names[0])
        ax.set_ylabel(cv_names[1])
    else:
        fig = Figure(figsize=(4.8 * len(cv_names), 4.0), layout="constrained")
        for k, cv in enumerate(cv_names):
            ax = fig.add_subplot(1, len(cv_names), k + 1)
            ax.hist(values[cv], bins=bins, histtype="stepfilled", alpha=0.7, label=f"{len(values)} samples")
            ax.set_xlabel(cv)
            ax.set_ylabel("samples per bin")
            ax.legend()
    fig.suptitle(f"CV histogram ({len(values)} samples)")
    _save(fig, path)


def plot_walker_traces(samples, cv_names, path: str | os.PathLike, max_walkers: int = 16) -> None:
    """CV against time, one line per walker (at most ``max_walkers``, evenly chosen), one panel per CV.

    ``samples`` has columns ``walker``, ``time_ps``, the CVs and, for a campaign's rounds,
    ``round``: each round's time restarts at zero and its walkers start afresh, so the rounds
    are drawn one after another, split by dashed lines.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cv_names = list(cv_names)
    if "round" not in samples:
        samples = samples.assign(round=0)
    walkers = np.unique(samples["walker"])
    shown = walkers[np.unique(np.linspace(0, walkers.size - 1, min(max_walkers, walkers.size)).round().astype(int))]
    round_end = samples.groupby("round")["time_ps"].max()
    offset = round_end.cumsum().shift(fill_value=0.0)
    fig = Figure(figsize=(8.0, 2.6 * len(cv_names) + 0.8), layout="constrained")
    axes = fig.subplots(len(cv_names), 1, sharex=True, squeeze=False)[:, 0]
    colours = colormaps["tab20"]
    for (rnd, walker), trace in samples[samples["walker"].isin(shown)].groupby(["round", "walker"]):
        trace = trace.sort_values("time_ps")
        k = int(np.searchsorted(shown, walker))
        for ax, cv in zip(axes, cv_names):
            ax.plot(trace["time_ps"] + offset[rnd], trace[cv], color=colours(k % 20), linewidth=0.8,
                    label=f"walker {walker}" if rnd == offset.index[0] else None)
    for ax, cv in zip(axes, cv_names):
        ax.set_ylabel(cv)
        for boundary in offset.iloc[1:]:
            ax.axvline(boundary, color="0.5", linestyle="--", linewidth=0.6)
    axes[-1].set_xlabel("time (ps)" if len(offset) == 1 else f"time (ps), rounds 0-{offset.index[-1]} one after another")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle(f"Walker traces ({shown.size} of {walkers.size} walkers)")
    _save(fig, path)


def _save(fig, path: str | os.PathLike) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=Path(path).suffix.lstrip(".") or "png")
