"""Physics-informed training of the conditional flow: reverse KL, optionally plus forward NLL.

For one conditioning value ``s`` the reverse KL to the exact conditional ``p(y|s) ∝ exp(-beta U)``
is, up to the constant ``beta F(s)``,

    L(phi; s) = E_{y ~ q(.|s)} [beta U(s, y) + ln q(y|s)] = beta F(s) + KL(q || p) >= beta F(s),

estimated with reparameterised samples so gradients flow through ``U`` (METHODS.md §2). Each
step averages it over a batch of conditioning values drawn from a :class:`Conditioning`: the
CV range uniformly (``grid``: every point of the estimation grid, and everything between) or
given CV samples from FG or CG trajectories (``samples``). No FG trajectory is needed, and none
has to cross a barrier: the loss at a transition state is as easy as in a basin.

With ``nll_weight > 0`` the forward NLL ``-E_data ln q(y|s)`` on given (s, y) pairs (mapped FG
frames) is added, weighted; it pulls the flow toward regions the data saw, the reverse KL
keeps it from spreading into high energy.

Training is seeded (torch's global generator, seeded once) and writes a checkpoint every
``checkpoint_interval`` steps (model, optimiser, learning-rate schedule, RNG state, history),
so a killed run resumes where it stopped and ends with the same flow as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cgflow.io import load_checkpoint, write_torch

log = logging.getLogger(__name__)

FINAL_LR_FRACTION = 0.05
"""The learning rate decays (cosine) from ``lr`` to this fraction of it over the run."""
MAX_GRAD_NORM = 10.0
"""Gradient-norm clip: early samples can land on the box wall with huge energies."""


@dataclass(frozen=True)
class TrainSettings:
    """Training hyper-parameters (the ``ccg.train`` config section, plus the seed)."""

    steps: int = 2000
    batch: int = 256
    lr: float = 3e-3
    nll_weight: float = 0.0
    checkpoint_interval: int = 200
    log_interval: int = 100
    seed: int = 1


@dataclass(frozen=True)
class Conditioning:
    """Where the conditioning values ``s`` come from: uniform on [lower, upper] or given samples."""

    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    samples: np.ndarray | None = None

    @classmethod
    def uniform(cls, lower, upper) -> "Conditioning":
        return cls(lower=np.atleast_1d(np.asarray(lower, dtype=float)), upper=np.atleast_1d(np.asarray(upper, dtype=float)))

    @classmethod
    def from_samples(cls, samples) -> "Conditioning":
        s = np.asarray(samples, dtype=float)
        s = s[:, None] if s.ndim == 1 else s
        s = s[np.all(np.isfinite(s), axis=1)]
        if len(s) == 0:
            raise ValueError("no finite CV samples to condition on")
        return cls(samples=s)

    @property
    def kind(self) -> str:
        return "samples" if self.samples is not None else "grid"

    def draw(self, n: int):
        """``n`` conditioning values (n, k) as a float64 tensor, from torch's global generator."""
        import torch

        if self.samples is not None:
            idx = torch.randint(len(self.samples), (n,))
            return torch.as_tensor(self.samples, dtype=torch.float64)[idx]
        lo = torch.as_tensor(self.lower, dtype=torch.float64)
        hi = torch.as_tensor(self.upper, dtype=torch.float64)
        return lo + (hi - lo) * torch.rand(n, lo.numel(), dtype=torch.float64)


def reverse_kl_loss(flow, energy, s, kT: float):
    """Batch mean of ``beta U_train(s, y) + ln q(y|s)`` with y ~ q(.|s) (one per row), dimensionless."""
    y, logq = flow.rsample_and_log_prob(s)
    return (energy.training_energy(s, y) / kT + logq).mean()


def _signature(flow, settings: TrainSettings, conditioning: Conditioning, extra: dict | None) -> str:
    """What a checkpoint must match to be resumed from (hyper-parameters, settings, data shape)."""
    cond = {"kind": conditioning.kind}
    if conditioning.samples is not None:
        cond["n"] = len(conditioning.samples)
        cond["sum"] = round(float(conditioning.samples.sum()), 6)
    else:
        cond["range"] = [conditioning.lower.tolist(), conditioning.upper.tolist()]
    return json.dumps({"flow": flow.config(), "settings": asdict(settings), "conditioning": cond,
                       "extra": extra or {}}, sort_keys=True)


def train(flow, energy, conditioning: Conditioning, settings: TrainSettings, kT: float,
          nll_data: tuple[np.ndarray, np.ndarray] | None = None, checkpoint: Path | None = None,
          signature_extra: dict | None = None) -> dict:
    """Train ``flow`` in place on ``energy`` (:class:`~cgflow.reconstruction.energy.ToyEnergy`,
    :class:`~cgflow.reconstruction.alanine.ZMatrixEnergy` or anything with ``training_energy(s, y)``
    and an ``evaluations`` count); returns the history and cost figures.

    ``nll_data``: (s (n, k), y (n, m)) pairs for the forward NLL (needed when nll_weight > 0).
    ``checkpoint``: a file to write every ``checkpoint_interval`` steps and to resume from when it
    exists and was written by the same flow, settings and conditioning (otherwise it is ignored
    and overwritten). The file is removed when training ends.
    """
    import torch

    if settings.nll_weight > 0 and nll_data is None:
        raise ValueError("nll_weight > 0 needs (s, y) samples for the forward NLL")
    torch.manual_seed(settings.seed)
    optimiser = torch.optim.Adam(flow.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.steps,
                                                          eta_min=settings.lr * FINAL_LR_FRACTION)
    signature = _signature(flow, settings, conditioning, signature_extra)
    history: list[dict] = []
    start, evaluations_before, wall_before = 0, 0, 0.0
    state = load_checkpoint(checkpoint, signature)
    if state is not None:
        flow.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        history = list(state["history"])
        start = int(state["step"])
        evaluations_before = int(state["evaluations"])
        wall_before = float(state["wall_s"])
        log.info("resuming flow training from %s at step %d", checkpoint, start)
    if nll_data is not None:
        nll_s = torch.as_tensor(np.asarray(nll_data[0], dtype=float).reshape(len(nll_data[0]), -1))
        nll_y = torch.as_tensor(np.asarray(nll_data[1], dtype=float).reshape(len(nll_data[1]), -1))
    evaluations0 = energy.evaluations
    t0 = time.perf_counter()
    flow.train()
    running = {"loss": 0.0, "reverse_kl": 0.0, "nll": 0.0, "n": 0}
    for step in range(start, settings.steps):
        s = conditioning.draw(settings.batch)
        kl = reverse_kl_loss(flow, energy, s, kT)
        loss = kl
        nll = torch.zeros((), dtype=torch.float64)
        if settings.nll_weight > 0:
            idx = torch.randint(len(nll_s), (settings.batch,))
            nll = -flow.log_prob(nll_y[idx], nll_s[idx]).mean()
            loss = loss + settings.nll_weight * nll
        if not torch.isfinite(loss):
            raise RuntimeError(f"flow training diverged at step {step + 1} (loss {loss.item()}); "
                               "lower ccg.train.lr or check the energy")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), MAX_GRAD_NORM)
        optimiser.step()
        schedule.step()
        running["loss"] += loss.item()
        running["reverse_kl"] += kl.item()
        running["nll"] += nll.item()
        running["n"] += 1
        done = step + 1
        if done % settings.log_interval == 0 or done == settings.steps:
            n = running.pop("n")
            entry = {"step": done, **{k: v / n for k, v in running.items()}, "lr": schedule.get_last_lr()[0],
                     "wall_s": wall_before + time.perf_counter() - t0}
            history.append(entry)
            log.info("step %d/%d  loss %.4f  reverse KL %.4f  nll %.4f  (%.1f s)", done, settings.steps,
                     entry["loss"], entry["reverse_kl"], entry["nll"], entry["wall_s"])
            running = {"loss": 0.0, "reverse_kl": 0.0, "nll": 0.0, "n": 0}
        if checkpoint is not None and done % settings.checkpoint_interval == 0 and done < settings.steps:
            state = {"signature": signature, "step": done, "model": flow.state_dict(),
                     "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                     "rng": torch.get_rng_state(), "history": history,
                     "evaluations": evaluations_before + energy.evaluations - evaluations0,
                     "wall_s": wall_before + time.perf_counter() - t0}
            write_torch(checkpoint, state)
    flow.eval()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return {"history": history, "steps": settings.steps, "resumed_at": start,
            "energy_evaluations": evaluations_before + energy.evaluations - evaluations0,
            "wall_s": wall_before + time.perf_counter() - t0}
