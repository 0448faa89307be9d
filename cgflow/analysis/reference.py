"""``analysis.reference: metadynamics_long``: a long, converged well-tempered metadynamics FES
of the campaign's system on the campaign's analysis bins, computed once and cached.

Why: a molecule has no exact PMF, yet every campaign scores itself against a reference. The
reference depends only on the physics (system incl. solvent, CVs, temperature), on the bins it
is written on, and on the metadynamics settings that produced it; it does not depend on the
campaign's name, seed, rounds or budget. So it is keyed on exactly those (:func:`cache_key`)
and stored once as ``reference-<key>.csv`` + ``reference-<key>.json`` (provenance) in

1. ``cgflow/systems/data/`` (references shipped in the package, looked up by key), else
2. the user cache: ``$CGFLOW_CACHE``, or ``$XDG_CACHE_HOME/cgflow``, or ``~/.cache/cgflow``,

and computed there (resumable from the metadynamics checkpoints in ``work-<key>/``) when
neither has it. The run is :func:`cgflow.sampling.metadynamics.sample_metadynamics` (OpenMM's
``Metadynamics``, walkers sharing one bias) on a campaign derived from the user's, with the
long settings of :class:`LongMetadSettings`. Convergence check: the RMSE of the FES change
between the last two snapshots, over bins where the final F < ``f_max`` kJ/mol, after removing
the mean offset; converged when below ``threshold`` kJ/mol. The result is written either way,
with the verdict in the log and the provenance. The check sees the FES stop changing, not that
it is right: well-tempered metadynamics slows its own change by design, and a region no walker
reached never changes (four Müller-Brown peer runs passed it at 0.18-0.28 kJ/mol while 1.0-1.2
kJ/mol off the exact PMF). The shipped alanine reference is checked independently, by MD under
a fixed bias reweighted (tests/unit/test_reference.py); a new one deserves the same.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KEY_VERSION = 2
"""Bumped when the way a reference is computed changes, so older caches no longer match."""
DATA_DIR = Path(__file__).resolve().parent.parent / "systems" / "data"


@dataclass(frozen=True)
class LongMetadSettings:
    """Settings of the long reference run (kJ/mol, rad or nm, ps, steps per walker)."""

    walkers: int = 8
    steps: int = 1_500_000
    height: float = 1.2
    width: float = 0.35
    bias_factor: float = 8.0
    frequency: int = 500
    grid: int = 181
    snapshots: int = 10
    report_interval: int = 1000
    timestep: float = 0.002
    friction: float = 1.0
    seed: int = 2024
    f_max: float = 20.0
    threshold: float = 0.5

    @classmethod
    def for_campaign(cls, campaign, **overrides) -> "LongMetadSettings":
        """The long settings for the campaign's system: the defaults for molecules; for toys a
        width of 1/20 of the CV range, the campaign's timestep and friction; then ``overrides``."""
        s = campaign.sampling
        base = {"timestep": s.timestep, "friction": s.friction}
        if campaign.system.is_toy:
            from cgflow.analysis.campaign import cv_domain

            lower, upper, _ = cv_domain(campaign)
            base |= {"width": (upper[0] - lower[0]) / 20, "height": s.kT / 2, "report_interval": 100}
        return replace(cls(**base), **overrides)

    def key_fields(self) -> dict:
        """What the result depends on: all but the convergence-check parameters."""
        return {k: v for k, v in asdict(self).items() if k not in ("f_max", "threshold")}


def cache_dir() -> Path:
    """``$CGFLOW_CACHE``, else ``$XDG_CACHE_HOME/cgflow``, else ``~/.cache/cgflow``."""
    if os.environ.get("CGFLOW_CACHE"):
        return Path(os.environ["CGFLOW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cgflow"


def key_material(campaign, settings: LongMetadSettings) -> dict:
    """Everything the reference depends on: the system section (type, solvent, potential, CVs,
    ...), the temperature, the analysis bin edges, the long settings and KEY_VERSION (and, for
    non-periodic CVs, how far the bias grid reaches past the bins). Not the campaign's name,
    seed, budget, rounds or analysis options other than the bins."""
    from cgflow.analysis.campaign import cv_domain, cv_edges
    from cgflow.sampling.metadynamics import GRID_MARGIN_WIDTHS

    margin = {} if all(cv_domain(campaign)[2]) else {"grid_margin_widths": GRID_MARGIN_WIDTHS}
    return {"version": KEY_VERSION, "system": campaign.resolved["system"],
            "temperature": float(campaign.sampling.temperature),
            "edges": [np.round(e, 9).tolist() for e in cv_edges(campaign)],
            "metadynamics": {**settings.key_fields(), **margin}}


def cache_key(campaign, settings: LongMetadSettings | None = None) -> str:
    from cgflow.io import config_hash

    settings = settings or LongMetadSettings.for_campaign(campaign)
    return config_hash(key_material(campaign, settings))


def find_reference(key: str, dirs=None) -> Path | None:
    """The ``reference-<key>.csv`` in the shipped data, else the cache, that has its provenance."""
    for d in dirs if dirs is not None else (DATA_DIR, cache_dir()):
        csv = Path(d) / f"reference-{key}.csv"
        if csv.is_file() and csv.with_suffix(".json").is_file():
            return csv
    return None


def _derived_campaign(campaign, settings: LongMetadSettings):
    """The campaign the long run is: the user's system and temperature with the long settings
    (no rounds, no equilibration, ``snapshots`` budget points)."""
    from cgflow.config import Campaign

    r = copy.deepcopy(campaign.resolved)
    r["seed"] = settings.seed
    r["sampling"] |= {"walkers": settings.walkers, "steps": settings.steps, "equilibration": 0,
                      "report_interval": settings.report_interval, "timestep": settings.timestep,
                      "friction": settings.friction,
                      "checkpoint_interval": max(settings.steps // settings.snapshots, settings.frequency)}
    r["guidance"] = r.get("guidance", {}) | {"rounds": 0, "gamma": settings.bias_factor}
    r["analysis"] |= {"metadynamics": {"height": settings.height, "width": settings.width,
                                       "frequency": settings.frequency, "grid": settings.grid},
                      "budget_points": settings.snapshots, "peers": [], "reference": "none"}
    return Campaign(resolved=r)


def convergence(F: np.ndarray, f_max: float) -> dict:
    """FES change between snapshots (kJ/mol), over bins where the final F < f_max, with the
    mean offset removed: ``last_two_rmse`` (last vs second last), ``half_rmse`` (final vs the
    snapshot at half the run)."""
    mask = F[-1] < f_max

    def rmse(a, b):
        d = (a - b)[mask]
        return float(np.sqrt(np.mean((d - d.mean()) ** 2)))

    return {"last_two_rmse_kJmol": rmse(F[-1], F[-2]) if len(F) > 1 else float("nan"),
            "half_rmse_kJmol": rmse(F[-1], F[len(F) // 2 - 1]) if len(F) > 1 else float("nan"),
            "bins_below_fmax": int(mask.sum())}


def compute(campaign, settings: LongMetadSettings, out_csv: Path) -> dict:
    """Run the long metadynamics (resuming from ``work-<key>/`` beside ``out_csv``), write the
    FES of its last snapshot to ``out_csv`` and its provenance beside it; return the provenance."""
    from cgflow.analysis.campaign import _placeholder, cv_edges
    from cgflow.analysis.fes import fes_frame, write_fes_csv
    from cgflow.io import package_versions, remove_tree, write_json
    from cgflow.sampling.metadynamics import sample_metadynamics, write_snapshots

    t0 = time.perf_counter()
    out_csv = Path(out_csv)
    key = out_csv.stem.removeprefix("reference-")
    work = out_csv.parent / f"work-{key}"
    derived = _derived_campaign(campaign, settings)
    log.info("metadynamics_long reference %s: %d walkers x %d steps, height %.3g kJ/mol, width %.3g, "
             "bias factor %.3g", key, settings.walkers, settings.steps, settings.height, settings.width,
             settings.bias_factor)
    _, chunks, platform = sample_metadynamics(derived, work)
    snaps = write_snapshots(derived, chunks, work / "fes_snapshots.npz")
    F = snaps["F"]
    conv = convergence(F, settings.f_max)
    converged = bool(conv["last_two_rmse_kJmol"] < settings.threshold)
    names = campaign.system.cv_names
    frame = fes_frame(_placeholder(cv_edges(campaign), F[-1] - F[-1].min()), names)
    provenance = {
        "kind": "metadynamics_long", "key": key, "key_material": key_material(campaign, settings),
        "settings": asdict(settings), "platform": platform,
        "fg_steps": int(snaps["budget_steps"][-1]), "gaussians": int(len(snaps["hills_height"])),
        "md_wall_s": float(sum(c.wall_s for c in chunks)), "wall_s": time.perf_counter() - t0,
        "convergence": {**conv, "threshold_kJmol": settings.threshold, "f_max_kJmol": settings.f_max,
                        "converged": converged,
                        "snapshot_fg_steps": snaps["budget_steps"].tolist()},
        "versions": package_versions(),
    }
    write_fes_csv(frame[list(names) + ["F_kJmol"]], out_csv)
    write_json(out_csv.with_suffix(".json"), provenance)  # the JSON last: it marks the entry complete
    remove_tree(work)
    log.log(logging.INFO if converged else logging.WARNING,
            "metadynamics_long reference %s: %s (FES change between the last two snapshots %.3f kJ/mol "
            "RMSE where F < %g kJ/mol; threshold %g); %d FG steps in %.0f s", key,
            "converged" if converged else "NOT converged", conv["last_two_rmse_kJmol"], settings.f_max,
            settings.threshold, provenance["fg_steps"], provenance["wall_s"])
    return provenance


def metadynamics_long(campaign, settings: LongMetadSettings | None = None, dirs=None) -> Path:
    """The reference csv for the campaign: shipped or cached if its key matches, else computed
    into the cache. ``dirs`` overrides the places looked in (the last one is written to)."""
    settings = settings or LongMetadSettings.for_campaign(campaign)
    key = cache_key(campaign, settings)
    dirs = list(dirs) if dirs is not None else [DATA_DIR, cache_dir()]
    found = find_reference(key, dirs)
    if found is not None:
        log.info("metadynamics_long reference %s: using %s", key, found)
        return found
    target = Path(dirs[-1]) / f"reference-{key}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    # campaigns that share the cache (a seed scan) compute each reference once, in one work folder
    with open(target.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("metadynamics_long reference %s: another job is computing it; waiting for it", key)
            fcntl.flock(lock, fcntl.LOCK_EX)
        found = find_reference(key, dirs)
        if found is not None:
            log.info("metadynamics_long reference %s: using %s, computed meanwhile", key, found)
            return found
        compute(campaign, settings, target)
    return target


def read_provenance(csv: Path) -> dict:
    return json.loads(Path(csv).with_suffix(".json").read_text())


def well_tempered_bias(campaign, reference_F):
    """The reference's well-tempered bias, clip(cap - (1 - 1/gamma) F_ref, 0, cap), as a
    :class:`~cgflow.guidance.bias.BiasGrid` on the campaign's CV domain: the bias cgflow's rounds
    aim at, known in advance (bench-rounds' oracle; a fixed bias under which plain MD checks a
    reference). cap is ``guidance.barrier`` or, without one, (1 - 1/gamma) times F_ref's range.
    ``reference_F`` is on the analysis bins; the grid's points are the bins' corners for periodic
    CVs (the mean of the bins around each, the last corner the first), their centres otherwise
    (the bias is flat beyond them)."""
    from cgflow.analysis.campaign import cv_domain, cv_edges
    from cgflow.guidance.bias import BiasGrid

    F = np.asarray(getattr(reference_F, "F", reference_F), dtype=float)
    F = np.where(np.isfinite(F), F - np.nanmin(F), np.nanmax(F) - np.nanmin(F))
    _, _, periodic = cv_domain(campaign)
    lower, upper = [], []
    for axis, (e, p) in enumerate(zip(cv_edges(campaign), periodic)):
        if p:
            F = np.pad(0.5 * (F + np.roll(F, 1, axis)), [(0, 1) if i == axis else (0, 0) for i in range(F.ndim)],
                       mode="wrap")
            ends = (e[0], e[-1])
        else:
            ends = (0.5 * (e[0] + e[1]), 0.5 * (e[-2] + e[-1]))
        lower.append(ends[0])
        upper.append(ends[1])
    g = campaign.guidance
    cap = g.barrier if g.barrier is not None else (1 - 1 / g.gamma) * float(F.max())
    return BiasGrid(tuple(campaign.system.cv_names), tuple(lower), tuple(upper), tuple(periodic),
                    np.clip(cap - (1 - 1 / g.gamma) * F, 0.0, cap))
