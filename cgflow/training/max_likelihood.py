"""Reweighted maximum-likelihood training of a CV-energy ensemble (METHODS §1).

Maximum likelihood of the FG samples under ``p_m(s) = exp(-U_m(s)/kT) / Z_m`` is
relative-entropy minimisation. Member m minimises

    loss_m = beta Σ_i w_mi U_m(s_i) / Σ_i w_mi + ln Z_m,

whose gradient is ``beta (<grad U_m>_data,w - <grad U_m>_model)``. The weights ``w_i`` undo
the FG bias (from MBAR, computed elsewhere); ``w_mi`` multiplies them by how often member m's
bootstrap resample of the blocks (walker x round) drew sample i's block, so the members
disagree where the data are thin (bagging).

The model average comes either from **quadrature** (``ln Z_m`` by logsumexp on a grid: exact
up to grid error, for up to 3 CVs) or from **Langevin** chains: persistent CG Langevin runs
(:mod:`cgflow.sampling.cg_langevin`) of each member, started from its resampled data, give
``<U_m>_model`` and the surrogate loss ``beta (<U_m>_data,w - mean U_m(chains))`` has the same
gradient (its value is not the NLL). Training uses AdamW on all members at once, with a cosine
decay of the learning rate so the last steps settle instead of rattling around the optimum.
With a ``checkpoint`` file, a fit killed part-way resumes from its last checkpoint and ends
with the very model an uninterrupted fit gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from cgflow.analysis.fes import resampled_blocks
from cgflow.io import load_checkpoint, write_torch
from cgflow.models.cv_energy import CVEnergyEnsemble, Grid
from cgflow.sampling.cg_langevin import langevin as run_langevin

logger = logging.getLogger(__name__)

MODEL_AVERAGES = ("quadrature", "langevin")
GRID_POINTS = {1: 256, 2: 64, 3: 24}
"""Default quadrature points per CV, by number of CVs (256, 4096 and 13824 points in all)."""
LANGEVIN_DEFAULTS = {"chains": 128, "steps": 20, "dt": 0.002, "friction": 1.0}
"""Persistent chains per member, Langevin steps per training step, dt (ps) and friction (1/ps).
h = dt/friction = 0.002 CV units² per kJ/mol keeps h·curvature ≈ 0.1 for wells of ~50 kJ/mol/unit²
(a radian- or nm-scale CV). The chains lag the model, which biases barriers low (0.2 kT on the
test double well; 0.56 kT on a ~4 kT double well fitted in 800 steps on reweighted biased
frames, where quadrature is within 0.1 kT): quadrature, the default up to 3 CVs, has no such
lag. At a fixed cost, more steps per training step beat more chains."""
FINAL_LR_FRACTION = 0.05
"""The cosine schedule ends at this fraction of the initial learning rate."""
CHECKPOINT_EVERY = 100
"""Training steps between two checkpoints (seconds of work on two CVs)."""


def fit(
    model: CVEnergyEnsemble,
    cv: np.ndarray,
    weights: np.ndarray,
    blocks: np.ndarray,
    kT: float,
    *,
    model_average: str = "quadrature",
    grid: Grid | None = None,
    steps: int = 1500,
    lr: float = 3e-3,
    batch_size: int = 8192,
    weight_decay: float = 1e-4,
    seed: int = 0,
    langevin: dict | None = None,
    log_every: int | None = None,
    checkpoint: Path | None = None,
) -> dict:
    """Train ``model`` in place on CV samples ``cv`` (n, d) with FG weights (n,) and block labels (n,).

    Each member sees a block bootstrap of the samples (:func:`cgflow.analysis.fes.resampled_blocks`),
    drawn across the rounds: unlike the FES error bars, which resample within each round, the
    members' spread then also holds how many frames each round gave, which is what
    guidance.e0/e1 were set against (drawn within the rounds, alanine's first hit in
    bench-rounds went from 0.60 to 0.65 of metadynamics' steps on seed 1, its last crossing of
    the target from 0.60 to 0.75).

    ``kT`` in kJ/mol. Samples of a non-periodic CV outside [lower, upper] are dropped; periodic
    CVs are wrapped. ``grid`` is the quadrature grid (default: :data:`GRID_POINTS` per CV over the
    model's box; not used with Langevin); ``langevin`` overrides :data:`LANGEVIN_DEFAULTS`.
    With more than ``batch_size`` samples, each step draws for each member ``batch_size``
    samples with probability ∝ w_mi (an unbiased minibatch of the weighted average); otherwise
    the sums are exact. ``weight_decay`` is AdamW's (decoupled); progress is logged every
    ``log_every`` steps (default: five times per fit). The same arguments give the same model
    on CPU. ``checkpoint``: a file written every :data:`CHECKPOINT_EVERY` steps and resumed from
    when it was written for the same model, data and arguments (else it is ignored and
    overwritten); it is removed when the fit ends.

    Returns the history: ``loss`` (mean over members, per step), ``loss_per_member`` (per step),
    ``n_samples`` (used after dropping), ``model_average`` and ``resumed_wall_s`` (seconds the
    killed runs before this one spent on the steps it resumed from; 0 without a resume). Raises RuntimeError when a
    member's loss becomes NaN or infinite.
    """
    if model_average not in MODEL_AVERAGES:
        raise ValueError(f"model_average must be one of {list(MODEL_AVERAGES)}, got {model_average!r}")
    if not kT > 0 or steps < 1 or batch_size < 1:
        raise ValueError(f"need kT > 0, steps >= 1 and batch_size >= 1, got {kT}, {steps}, {batch_size}")
    settings = dict(LANGEVIN_DEFAULTS)
    unknown = set(langevin or {}) - set(settings)
    if unknown:
        raise ValueError(f"unknown langevin settings {sorted(unknown)}; valid keys are {sorted(settings)}")
    settings.update(langevin or {})
    if settings["chains"] < 1 or settings["steps"] < 1:
        raise ValueError(f"langevin chains and steps must be >= 1, got {settings['chains']} and {settings['steps']}")

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    s, sample_weights = _prepare(model, cv, weights, blocks, rng)
    param = model.weights[0]
    beta = 1.0 / kT
    s_t = torch.as_tensor(s, dtype=param.dtype, device=param.device)
    w_t = torch.as_tensor(sample_weights, dtype=param.dtype, device=param.device)
    full_batch = len(s) <= batch_size
    if not full_batch:
        sampler = _WeightedSampler(sample_weights, batch_size, rng)

    if model_average == "quadrature":
        if grid is None:
            if model.dim not in GRID_POINTS:
                raise ValueError(
                    f"quadrature handles up to 3 CVs, the model has {model.dim}; use model_average='langevin'"
                )
            grid = Grid(model.lower, model.upper, model.periodic, GRID_POINTS[model.dim])
        elif grid.points.shape[1] != model.dim:
            raise ValueError(f"the grid has {grid.points.shape[1]} CVs, the model {model.dim}")
        nodes = torch.as_tensor(grid.points, dtype=param.dtype, device=param.device)
        log_cell = math.log(grid.cell_volume)
    else:
        generator = torch.Generator(device=param.device).manual_seed(seed)
        chains = s_t[torch.as_tensor(_WeightedSampler(sample_weights, settings["chains"], rng).draw())]
        M, R = model.members, settings["chains"]

        def chain_energy(x):
            return model(x.view(M, R, model.dim)).reshape(-1)

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=FINAL_LR_FRACTION * lr)
    log_every = log_every or max(1, steps // 5)
    history = {"loss": [], "loss_per_member": [], "n_samples": len(s), "model_average": model_average}
    start, signature, resumed_wall = 0, None, 0.0
    if checkpoint is not None:  # hashing the samples is work only a checkpoint needs
        signature = _signature(model, s, sample_weights, nodes if model_average == "quadrature" else None,
                               [model_average, steps, lr, batch_size, weight_decay, seed, settings])
    saved = load_checkpoint(checkpoint, signature)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        rng.bit_generator.state = json.loads(saved["numpy_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if model_average == "langevin":
            generator.set_state(saved["generator"])
            chains = saved["chains"]
        history["loss"], history["loss_per_member"] = list(saved["loss"]), list(saved["loss_per_member"])
        start, resumed_wall = int(saved["step"]), float(saved.get("wall_s", 0.0))
        logger.info("max-likelihood: resuming from %s at step %d of %d", checkpoint, start, steps)
    t0 = time.perf_counter()
    for step in range(start, steps):
        if full_batch:
            data_term = beta * (w_t * model(s_t)).sum(dim=1)
        else:
            data_term = beta * model(s_t[torch.as_tensor(sampler.draw())]).mean(dim=1)
        if model_average == "quadrature":
            model_term = torch.logsumexp(-beta * model(nodes), dim=1) + log_cell
        else:
            chains = run_langevin(
                chain_energy, chains.reshape(M * R, -1), kT, settings["dt"], settings["friction"], settings["steps"],
                model.lower, model.upper, model.periodic, generator,
            ).view(M, R, -1)
            model_term = -beta * model(chains).mean(dim=1)
        loss = data_term + model_term
        _check_finite(loss, step)
        optimiser.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimiser.step()
        schedule.step()

        per_member = loss.detach().cpu().tolist()
        history["loss_per_member"].append(per_member)
        history["loss"].append(float(np.mean(per_member)))
        if (step + 1) % log_every == 0 or step == steps - 1:
            logger.info("max-likelihood step %d/%d: loss %.4f (members %s)", step + 1, steps, history["loss"][-1],
                        ", ".join(f"{x:.4f}" for x in per_member))
        if checkpoint is not None and (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            state = {"signature": signature, "step": step + 1, "model": model.state_dict(),
                     "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                     "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                     "loss": history["loss"], "loss_per_member": history["loss_per_member"],
                     "wall_s": resumed_wall + time.perf_counter() - t0}
            if model_average == "langevin":
                state.update(generator=generator.get_state(), chains=chains)
            write_torch(checkpoint, state)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    history["resumed_wall_s"] = resumed_wall
    return history


def _signature(model, s: np.ndarray, sample_weights: np.ndarray, nodes, arguments: list) -> str:
    """What a checkpoint must have been written for: the model as it starts, the samples, each
    member's weights, the quadrature nodes and the other arguments."""
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode())
    for array in (*(t.detach().cpu().numpy() for t in model.state_dict().values()), s, sample_weights,
                  nodes.cpu().numpy() if nodes is not None else np.zeros(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _prepare(model: CVEnergyEnsemble, cv, weights, blocks, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The usable samples (n', d) and each member's bootstrap weights (M, n'), rows summing to 1."""
    s = np.array(cv, dtype=float, ndmin=2)
    if s.ndim != 2 or s.shape[1] != model.dim:
        raise ValueError(f"cv must have shape (n, {model.dim}), got {np.shape(cv)}")
    w = np.asarray(weights, dtype=float)
    labels = np.asarray(blocks)
    if w.shape != (len(s),) or labels.shape != (len(s),):
        raise ValueError("weights and blocks need one entry per sample")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    if not np.all(np.isfinite(s)):
        raise ValueError("cv contains NaN or infinite values")

    keep = np.ones(len(s), dtype=bool)
    for i, (lo, hi, periodic) in enumerate(zip(model.lower, model.upper, model.periodic)):
        if periodic:
            s[:, i] = lo + np.mod(s[:, i] - lo, hi - lo)
        else:
            keep &= (s[:, i] >= lo) & (s[:, i] <= hi)
    s, w, labels = s[keep], w[keep], labels[keep]
    if not np.any(w > 0):
        raise ValueError("no sample of positive weight lies inside the model's CV box")

    codes, multiplicity = resampled_blocks(labels, None, model.members, rng)
    member_w = w[None, :] * multiplicity[:, codes]
    totals = member_w.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError("a bootstrap resample drew only blocks of zero weight; give more blocks with positive weight")
    return s, member_w / totals


class _WeightedSampler:
    """Draws, for each member, ``size`` sample indices with probability ∝ that member's weights."""

    def __init__(self, member_weights: np.ndarray, size: int, rng: np.random.Generator):
        self._cdf = np.cumsum(member_weights, axis=1)
        self._cdf /= self._cdf[:, -1:]
        self._size = size
        self._rng = rng

    def draw(self) -> np.ndarray:
        u = self._rng.random((len(self._cdf), self._size))
        idx = np.stack([np.searchsorted(cdf, row, side="right") for cdf, row in zip(self._cdf, u)])
        return np.minimum(idx, self._cdf.shape[1] - 1)


def _check_finite(loss: torch.Tensor, step: int) -> None:
    bad = ~torch.isfinite(loss)
    if bad.any():
        member = int(bad.nonzero()[0])
        raise RuntimeError(
            f"maximum-likelihood training diverged: member {member}'s loss is {loss[member].item()} at step {step}; "
            "lower lr, check the weights, or (Langevin) lower dt"
        )
