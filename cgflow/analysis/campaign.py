"""The campaign's CV domain and bins, its reference FES, and reading its samples.

The CV grid is one function of the config (:func:`cv_edges`) so that the reference, the
estimate and any comparison always share bins.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cgflow.analysis.fes import fes_frame, read_fes_csv, write_fes_csv

log = logging.getLogger(__name__)


def cv_domain(campaign) -> tuple[tuple[float, ...], tuple[float, ...], tuple[bool, ...]]:
    """(lower, upper, periodic) per CV: the box's CV range for toys, [-pi, pi) for dihedrals.
    The analysis bins, the CG models and the bias all live on this domain."""
    system = campaign.system
    if system.is_toy:
        ranges = system.build().cv_range()
        periodic = (False,) * len(ranges)
    else:
        ranges = [(-np.pi, np.pi)] * len(system.cvs)
        periodic = (True,) * len(ranges)
    return tuple(r[0] for r in ranges), tuple(r[1] for r in ranges), periodic


def cv_edges(campaign) -> list[np.ndarray]:
    """Bin edges per CV over the CV domain, analysis.bins bins each."""
    lower, upper, _ = cv_domain(campaign)
    return [np.linspace(lo, hi, n + 1) for lo, hi, n in zip(lower, upper, campaign.analysis.bins)]


def write_reference(campaign, out: Path) -> None:
    """Exact quadrature for toys; the shipped, cached or freshly computed long metadynamics FES
    for ``metadynamics_long`` (:mod:`cgflow.analysis.reference`); or the configured reference
    file; a file is checked against our grid."""
    edges = cv_edges(campaign)
    names = campaign.system.cv_names
    ref = campaign.analysis.reference
    if ref == "exact":
        t0 = time.perf_counter()
        F = campaign.system.build().reference_fes(edges, campaign.sampling.temperature)
        log.info("exact PMF by quadrature in %.2f s", time.perf_counter() - t0)
    else:
        if ref == "metadynamics_long":
            from cgflow.analysis.reference import metadynamics_long

            ref = metadynamics_long(campaign)
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


def read_samples(campaign, paths: list[Path]):
    """All rounds' samples in one DataFrame with a ``round`` column, and their provenance.
    Each file must have been sampled under this campaign's seed, system and sampling keys."""
    import pandas as pd

    from cgflow.io import InputError

    frames, prov = [], []
    expected = campaign.stage_hash("sampling")
    for path in paths:
        p = read_provenance_of(path, "samples.parquet")
        if "fg_steps" not in p:
            raise InputError(f"{path} is not a samples.parquet (it has no sampling provenance)")
        if p["sampling_hash"] != expected:
            raise InputError(f"{path} is not a samples.parquet of this campaign: it was sampled under other seed, "
                             f"system or sampling keys (sampling hash {p['sampling_hash']}, this config's {expected})")
        df = pd.read_parquet(path)
        df.insert(0, "round", p.get("round", len(prov)))
        frames.append(df)
        prov.append(p)
    return pd.concat(frames, ignore_index=True), prov


def read_provenance_of(path: Path, kind: str) -> dict:
    """The cgflow provenance of a parquet file that must be a ``kind`` (e.g. weights.parquet)."""
    from cgflow.io import InputError, read_provenance, reading

    with reading(path, kind):  # pyarrow's ArrowInvalid is a ValueError
        p = read_provenance(path)
    if not p:
        raise InputError(f"{path} is not a {kind} written by cgflow (it has no cgflow provenance)")
    return p
