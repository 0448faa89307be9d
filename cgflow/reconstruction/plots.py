"""The CCG figure: F(s) beside the exact PMF with untrusted points marked, and the ESS per point.

Drawn like every cgflow figure (a bare matplotlib Figure, saved atomically through
:func:`cgflow.analysis.plots._save`). One CV: two panels sharing the CV axis. Two CVs: the
2-D surface plot of :func:`cgflow.analysis.plots.plot_fes` with untrusted points blanked.
"""

from __future__ import annotations

import os

import numpy as np

from cgflow.analysis.plots import F_LABEL, _save, plot_fes


def plot_ccg_fes(frame, cv_names, path: str | os.PathLike, kT: float, min_ess_fraction: float,
                 cutoff_kT: float = 6.0, title: str = "") -> None:
    """Plot a :func:`~cgflow.reconstruction.free_energy.ccg_free_energy` frame (with ``F_exact_kJmol``
    when known). Untrusted points are drawn as red crosses and left out of the line."""
    cv_names = list(cv_names)
    title = title or "Cycle coarse graining: free energy from the flow alone"
    if len(cv_names) == 2:
        shown = frame.copy()
        shown.loc[~shown["trusted"], ["F_kJmol", "F_err_kJmol"]] = np.nan
        if "F_exact_kJmol" in shown:
            shown["F_ref_kJmol"] = shown["F_exact_kJmol"]
        plot_fes(shown[cv_names + [c for c in ("F_kJmol", "F_err_kJmol", "F_ref_kJmol") if c in shown]],
                 cv_names, path, title=title)
        return
    if len(cv_names) != 1:
        raise ValueError(f"plot_ccg_fes draws 1-D and 2-D surfaces, not {len(cv_names)}-D")
    from matplotlib.figure import Figure

    cv = cv_names[0]
    rows = frame.sort_values(cv)
    x = rows[cv].to_numpy(dtype=float)
    F, err = rows["F_kJmol"].to_numpy(dtype=float), rows["F_err_kJmol"].to_numpy(dtype=float)
    ok = rows["trusted"].to_numpy(dtype=bool)
    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    ax, ax_ess = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    F_ok = np.where(ok, F, np.nan)
    band = np.where(np.isfinite(err), err, 0.0)
    ax.fill_between(x, F_ok - band, F_ok + band, color="C0", alpha=0.3, linewidth=0, label="± bootstrap s.e.")
    ax.plot(x, F_ok, color="C0", marker=".", label="CCG (flow + importance sampling)")
    top = cutoff_kT * kT * 3
    if "F_exact_kJmol" in rows:
        exact = rows["F_exact_kJmol"].to_numpy(dtype=float)
        ax.plot(x, exact, "k--", label="exact (quadrature)")
        top = max(top, 1.2 * np.nanmax(np.where(exact < top, exact, np.nan)))
    if (~ok).any():
        ax.plot(x[~ok], np.clip(F[~ok], None, top), "rx", markersize=8, label="untrusted (low ESS)")
    ax.set_ylim(-0.05 * top, top)
    ax.set_ylabel(F_LABEL)
    ax.legend(fontsize="small")
    ax_ess.semilogy(x, np.clip(rows["ess_fraction"].to_numpy(dtype=float), 1e-4, 1), color="C2", marker=".")
    ax_ess.axhline(min_ess_fraction, color="r", linestyle=":", label=f"trust threshold {min_ess_fraction:g}")
    ax_ess.set_ylim(1e-4, 1.5)
    ax_ess.set_ylabel("ESS / samples")
    ax_ess.set_xlabel(cv)
    ax_ess.legend(fontsize="small")
    fig.suptitle(title)
    _save(fig, path)
