"""Relative-entropy minimisation with reweighting (METHODS §3, chemtrain / VOTCA RE).

``grad S_rel = beta ( sum_j v_j dU/dtheta(M R_j) - sum_i w_i dU/dtheta(r_i) )``: ``v_j`` are the
FG frame weights (uniform for unbiased data; ``exp(beta V)`` normalised for biased rounds, as
from :mod:`cgflow.analysis.reweight`), ``r_i`` CG samples from CG MD under an earlier
``theta_old`` with ``w_i = softmax(-beta [U_theta - U_theta_old])(r_i)``, re-simulated when
``N_eff < threshold N``. The surrogate ``beta (sum v U(M R) - sum w.detach() U(r))`` has exactly
this gradient, so any torch optimiser applies. Its value is not S_rel; the trainer reports the
gradient norm and N_eff instead, and stops early when the gradient norm stalls.
"""

from __future__ import annotations

import torch

from cgflow.training.trainer import ReweightedSamples, Trainer, n_eff


def surrogate(model, x_fg, v_fg, x_cg, w_cg, kT: float) -> torch.Tensor:
    """A scalar whose gradient in the model parameters is the RE gradient estimate."""
    return ((v_fg * model(x_fg)).sum() - (w_cg.detach() * model(x_cg)).sum()) / kT


class RelativeEntropy(Trainer):
    def __init__(self, model, x_fg, simulate, kT: float, fg_weights=None, threshold: float = 0.9,
                 batch_size: int | None = None, max_reuse: int | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.x_fg = torch.as_tensor(x_fg, dtype=torch.float64)
        v = torch.ones(len(self.x_fg), dtype=torch.float64) if fg_weights is None else torch.as_tensor(fg_weights, dtype=torch.float64)
        self.v_fg = v / v.sum()
        self.samples = ReweightedSamples(simulate, kT, threshold, max_reuse)
        self.kT, self.batch_size = kT, batch_size

    def epoch(self) -> dict:
        self.optimizer.zero_grad()
        w, x = self.samples.weights(self.model)
        idx = torch.arange(len(self.x_fg))
        if self.batch_size and self.batch_size < len(idx):
            idx = torch.multinomial(self.v_fg, self.batch_size, replacement=True, generator=self.generator)
            v = torch.full((len(idx),), 1 / len(idx), dtype=torch.float64)
        else:
            v = self.v_fg
        loss = surrogate(self.model, self.x_fg[idx], v, x, w, self.kT)
        loss.backward()
        gnorm = float(torch.sqrt(sum((p.grad**2).sum() for p in self.params if p.grad is not None)))
        self.optimizer.step()
        return {"loss": gnorm, "n_eff": n_eff(w), "n_samples": len(w), "simulations": self.samples.n_simulations}
