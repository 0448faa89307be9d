"""The ``cgflow train`` action: fit round k's CG ensemble on all FG samples of rounds 0..k."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cgflow.io import package_versions, write_json

log = logging.getLogger(__name__)


def model_grid(campaign):
    """The quadrature grid of the CG models (guidance.model_grid points per CV over the CV domain)."""
    from cgflow.analysis.campaign import cv_domain
    from cgflow.models.cv_energy import Grid

    lower, upper, periodic = cv_domain(campaign)
    return Grid(lower, upper, periodic, campaign.guidance.model_grid)


def train_round(campaign, round_index: int, sample_paths: list[Path], weights_path: Path,
                out_model: Path, out_history: Path) -> None:
    """Fit round k's CG ensemble and write it (``cg.pt``) with its training curve; a killed job
    resumes the fit from ``cg.fit-checkpoint.pt`` beside ``out_model``."""
    import torch

    from cgflow.analysis.campaign import cv_domain
    from cgflow.guidance.campaign import learning_frames
    from cgflow.models.cv_energy import CVEnergyEnsemble, save
    from cgflow.training.max_likelihood import fit

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    g = campaign.guidance
    names = list(campaign.system.cv_names)
    df = learning_frames(campaign, sample_paths, weights_path)
    lower, upper, periodic = cv_domain(campaign)
    seed = int(np.random.SeedSequence([campaign.seed, round_index, 7]).generate_state(1)[0])
    model = CVEnergyEnsemble(lower, upper, periodic, hidden=g.hidden, members=g.ensemble, seed=seed)
    average = g.model_average if g.model_average != "auto" else ("quadrature" if len(names) <= 2 else "langevin")
    blocks = df["round"].to_numpy() * (campaign.sampling.walkers + 1) + df["walker"].to_numpy()
    history = fit(model, df[names].to_numpy(), df["weight"].to_numpy(), blocks, campaign.sampling.kT,
                  model_average=average, grid=model_grid(campaign), steps=g.train_steps, lr=g.learning_rate,
                  seed=seed, checkpoint=Path(out_model).with_name(f"{Path(out_model).stem}.fit-checkpoint.pt"))
    meta = {"round": round_index, "cv_names": names, "kT_kJmol": campaign.sampling.kT,
            "temperature_K": campaign.sampling.temperature, "model_average": average,
            "config_hash": campaign.hash, "seed": seed, "versions": package_versions(),
            "wall_s": history["resumed_wall_s"] + time.perf_counter() - t0}
    save(model, out_model, meta)
    write_json(out_history, {**meta, "loss": history["loss"], "n_samples": history["n_samples"]})
    log.info("round %d: trained %d CG models on %d frames in %.1f s (final loss %.4g)",
             round_index, g.ensemble, history["n_samples"], meta["wall_s"], history["loss"][-1])
