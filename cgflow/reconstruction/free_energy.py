"""Rare-event-free free energies: importance sampling from the flow at each CV value independently.

At a grid point ``s`` with ``M`` samples ``y_m ~ q(.|s)``,

    F(s) = -kT ln (1/M) sum_m exp(-beta U(s, y_m) - ln q(y_m|s))      (logsumexp; METHODS.md §2)

for any flow whose support covers ``p(y|s)``: the mean of the weights is an unbiased estimate of
``exp(-beta F)`` (F itself has a Jensen bias of about ``kT var(w) / (2 M mean(w)^2)``, negligible
with good overlap). How well the flow fits decides the variance, which the Kish effective
sample size of the weights ``ESS = (sum w)^2 / sum w^2`` measures. A point whose ``ESS / M`` is below
``min_ess_fraction`` or whose ESS is below ``min_ess`` is **untrusted**: its number is still
written (finite wherever any sample has weight) but flagged, excluded from the zero of F and
from every comparison, and counted in the summary, never averaged in silently. The bootstrap
error (resampling the M samples) is reported for all points, but it is itself unreliable
exactly where the ESS is low, which is why the flag, not the error bar, decides trust.

Why the default ``min_ess_fraction`` is 0.2, not the customary 0.05: the ESS is computed from
the same samples, so a proposal narrower than ``p`` (reverse KL's typical failure) misses mass
that its samples never show. For a 1-D Gaussian target with M = 2000 and proposals 0.1-1x as
wide, points with ESS/M >= 0.05 still had errors up to 1.5 kT (p95 0.78 kT); with >= 0.2 the p95
error was 0.12 kT (``python tests/benchmarks/bench_ccg.py --trust-study``). The PSIS tail index k-hat
(:func:`pareto_khat`, Vehtari et al. 2024) is reported for every point but gates trust only when
``max_pareto_k`` is set: it added little beyond ESS/M >= 0.2 there, and it flags well-trained
flows (ESS/M ~ 0.99) whose tails are slightly lighter than ``p``'s, whose F is exact to 0.01 kT.

The mean force is the reweighted average of the derivative at fixed y: ``dF/ds = sum_m w_m
dU/ds(s, y_m)`` with the normalised weights, where U is the energy in y's measure (for a toy's
linear CV map the Jacobian is constant; for a Z-matrix map, U includes ``-kT ln J``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EstimateSettings:
    """The ``ccg.estimate`` config section, plus the seed."""

    samples_per_point: int = 2000
    min_ess_fraction: float = 0.2
    min_ess: float = 20.0
    max_pareto_k: float | None = None
    bootstrap: int = 200
    seed: int = 1


def _logsumexp(a: np.ndarray, axis=None) -> np.ndarray:
    from scipy.special import logsumexp

    with np.errstate(all="ignore"):
        return logsumexp(a, axis=axis)


def kish_ess(log_w: np.ndarray) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` of weights given as logs (-inf = 0)."""
    log_w = np.asarray(log_w, dtype=float)
    if not np.isfinite(log_w).any():
        return 0.0
    return float(np.exp(2 * _logsumexp(log_w) - _logsumexp(2 * log_w)))


def _gpd_fit(exceedances: np.ndarray) -> float:
    """Shape ``k`` of a generalised Pareto fit to positive, ascending ``exceedances``: the
    empirical-Bayes estimate of Zhang and Stephens (2009) with the weak prior of Vehtari et al.
    (the form PSIS uses)."""
    x = exceedances
    n = x.size
    m = 30 + int(np.sqrt(n))
    b = 1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b = b / (3 * x[int(n / 4 + 0.5) - 1]) + 1 / x[-1]
    with np.errstate(all="ignore"):
        k = np.log1p(-b[:, None] * x).mean(axis=1)
        profile = n * (np.log(-b / k) - k - 1)
        weights = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    ok = np.isfinite(weights) & (weights >= 10 * np.finfo(float).eps)
    if not ok.any():
        return float("nan")
    weights, b = weights[ok], b[ok]
    b_post = np.sum(b * weights) / np.sum(weights)
    k_post = np.log1p(-b_post * x).mean()
    return float((n * k_post + 10 * 0.5) / (n + 10))


def pareto_khat(log_w: np.ndarray) -> float:
    """PSIS diagnostic k-hat (Vehtari, Simpson, Gelman, Yao, Gabry 2024) of log-weights.

    The shape of a generalised Pareto fit to the largest ``min(M/5, 3 sqrt(M))`` weights: the
    weights' variance is finite only for k < 1/2, and above ~0.7 the estimate is unreliable
    however large the ESS looks (a flow too narrow or offset leaves mass that the samples never
    show). -inf when the largest weights are all equal (no tail); NaN when fewer than 25
    weights are positive (too few to judge; treated as untrusted).
    """
    lw = np.asarray(log_w, dtype=float)
    lw = lw[np.isfinite(lw)]
    M = lw.size
    tail = int(np.ceil(min(0.2 * M, 3 * np.sqrt(M))))
    if tail < 5:
        return float("nan")
    lw = np.sort(lw - lw.max())
    cutoff = lw[-tail - 1]
    exceed = np.exp(lw[-tail:]) - np.exp(cutoff)
    exceed = exceed[exceed > 0]
    if exceed.size < 5:  # the largest weights are all equal: bounded weights, no tail at all
        return float("-inf")
    return _gpd_fit(exceed)


def point_estimate(log_w: np.ndarray, dU_ds: np.ndarray, kT: float, n_bootstrap: int,
                   rng: np.random.Generator) -> dict:
    """F, its bootstrap error, the mean force (and its bootstrap error), ESS and k-hat at one point.

    ``log_w`` (M,): ``-beta U - ln q`` (-inf for zero weight); ``dU_ds`` (M, k), kJ/mol per CV unit.
    """
    M = log_w.size
    lse = _logsumexp(log_w)
    F = -kT * (lse - np.log(M))
    ess = kish_ess(log_w)
    dU_ds = np.where(np.isfinite(dU_ds), dU_ds, 0.0)
    if np.isfinite(lse):
        w = np.exp(log_w - lse)
        force = w @ dU_ds
    else:
        force = np.zeros(dU_ds.shape[1])
    idx = rng.integers(M, size=(n_bootstrap, M))
    lse_b = _logsumexp(log_w[idx], axis=1)
    F_b = -kT * (lse_b - np.log(M))
    ok = np.isfinite(F_b)
    F_err = float(np.std(F_b[ok], ddof=1)) if ok.sum() >= 2 else float("inf")
    with np.errstate(all="ignore"):
        w_b = np.exp(log_w[idx] - lse_b[:, None])
    force_b = np.einsum("bm,bmk->bk", np.where(np.isfinite(w_b), w_b, 0.0), dU_ds[idx])[ok]
    force_err = force_b.std(axis=0, ddof=1) if ok.sum() >= 2 else np.full(dU_ds.shape[1], np.inf)
    return {"F": float(F), "F_err": F_err, "force": force, "force_err": force_err, "ess": ess,
            "pareto_k": pareto_khat(log_w), "outside": float(np.mean(~np.isfinite(log_w)))}


def sample_point(flow, energy, s, M: int, kT: float):
    """``M`` flow samples at one CV value ``s`` (k,): log-weights (M,) and dU/ds (M, k), numpy."""
    import torch

    s_row = torch.as_tensor(np.atleast_1d(s), dtype=torch.float64)[None, :]
    with torch.no_grad():
        y, logq = flow.rsample_and_log_prob(s_row, n=M)
    y, logq = y[:, 0, :], logq[:, 0]
    u, grad = energy.mean_force_samples(s_row.expand(M, -1), y)
    log_w = (-u / kT - logq).detach().numpy()
    return log_w, grad.detach().numpy()


def ccg_free_energy(flow, energy, s_grid: np.ndarray, kT: float, settings: EstimateSettings, cv_names,
                    cv_unit: str = "nm"):
    """The CCG free energy at every row of ``s_grid`` (G, k), each point independently.

    Returns a DataFrame with the CV columns, ``F_kJmol`` (zero at the lowest *trusted* point),
    ``F_err_kJmol`` (bootstrap s.e.), the mean force ``mean_force_kJmol_<cv_unit>`` (one CV) or
    ``mean_force_<cv>_kJmol_<cv_unit>`` (several) with ``..._err`` columns, ``ess``, ``ess_fraction``,
    ``pareto_k`` (PSIS k-hat; -1 where the weights have no tail), ``trusted``, ``samples`` and
    ``outside_fraction`` (samples outside the box, weight 0).
    """
    import pandas as pd
    import torch

    cv_names = list(cv_names)
    s_grid = np.asarray(s_grid, dtype=float).reshape(len(s_grid), -1)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    M = settings.samples_per_point
    rows = []
    for s in s_grid:
        log_w, dU = sample_point(flow, energy, s, M, kT)
        rows.append(point_estimate(log_w, dU, kT, settings.bootstrap, rng))
    data = {name: s_grid[:, j] for j, name in enumerate(cv_names)}
    F = np.array([r["F"] for r in rows])
    ess = np.array([r["ess"] for r in rows])
    khat = np.array([r["pareto_k"] for r in rows])
    trusted = (ess / M >= settings.min_ess_fraction) & (ess >= settings.min_ess) & np.isfinite(F)
    if settings.max_pareto_k is not None:
        with np.errstate(invalid="ignore"):
            trusted &= khat <= settings.max_pareto_k  # NaN k-hat compares False: untrusted
    zero = F[trusted].min() if trusted.any() else F[np.isfinite(F)].min() if np.isfinite(F).any() else 0.0
    data["F_kJmol"] = F - zero
    data["F_err_kJmol"] = [r["F_err"] for r in rows]
    unit = f"_kJmol_{cv_unit}"
    names = ["mean_force" + unit] if len(cv_names) == 1 else [f"mean_force_{c}{unit}" for c in cv_names]
    for j, name in enumerate(names):
        data[name] = [r["force"][j] for r in rows]
        data[name.replace(unit, "_err" + unit)] = [r["force_err"][j] for r in rows]
    data["ess"] = ess
    data["ess_fraction"] = ess / M
    data["pareto_k"] = np.where(np.isneginf(khat), -1.0, khat)  # -inf (no tail) written as -1
    data["trusted"] = trusted
    data["samples"] = M
    data["outside_fraction"] = [r["outside"] for r in rows]
    frame = pd.DataFrame(data)
    frame.attrs["F_offset_kJmol"] = float(zero)  # F_kJmol + this = -kT ln Z(s) in the y measure
    n_bad = int((~trusted).sum())
    if n_bad:
        log.warning("%d of %d grid points are untrusted (ESS/M < %g, ESS < %g or k-hat > %s); "
                    "they are flagged, not used", n_bad, len(trusted), settings.min_ess_fraction,
                    settings.min_ess, settings.max_pareto_k)
    return frame


def compare_to_exact(frame, F_exact: np.ndarray, kT: float, cutoff_kT: float = 6.0) -> dict:
    """Score the CCG F against an exact F at the same points, over trusted points where exact F < cutoff.

    As :func:`cgflow.analysis.fes.compare_to_reference` does, the estimate is aligned by the
    constant that minimises the RMSE (the mean difference over the compared points). Untrusted
    points in the region are not compared, only counted (``n_untrusted_in_region``), and lower
    ``coverage``. ``max_abs_error_kT_min_aligned`` aligns both at their lowest compared point
    instead (the stricter figure the acceptance test uses).
    """
    F_exact = np.asarray(F_exact, dtype=float)
    F_exact = F_exact - np.nanmin(F_exact)
    F = frame["F_kJmol"].to_numpy(dtype=float)
    trusted = frame["trusted"].to_numpy(dtype=bool)
    region = F_exact < cutoff_kT * kT
    compared = region & trusted & np.isfinite(F)
    out = {"cutoff_kT": cutoff_kT, "n_region": int(region.sum()), "n_compared": int(compared.sum()),
           "n_untrusted_in_region": int((region & ~trusted).sum()),
           "coverage": float(compared.sum() / max(region.sum(), 1))}
    if not compared.any():
        return {**out, "rmse_kT": float("nan"), "max_abs_error_kT": float("nan"),
                "max_abs_error_kT_min_aligned": float("nan")}
    diff = F[compared] - F_exact[compared]
    aligned = diff - diff.mean()
    i0 = np.argmin(F_exact[compared])
    return {**out, "rmse_kT": float(np.sqrt(np.mean(aligned**2)) / kT),
            "max_abs_error_kT": float(np.abs(aligned).max() / kT),
            "max_abs_error_kT_min_aligned": float(np.abs(diff - diff[i0]).max() / kT)}
