"""DiffTRe: learning a CG potential from ensemble-averaged observables (METHODS §4).

``<O_k>_theta ~ sum_i w_i O_k(S_i)``, ``w = softmax(-beta [U_theta - U_ref])`` over CG samples
``S_i`` drawn under ``U_ref``; loss ``sum_k gamma_k (<O_k>_theta - target_k)^2``. Gradients flow
through the weights only (the observables do not depend on theta here), never through the MD,
and samples are re-simulated on the same ``N_eff`` rule as relative entropy.

For a tabulated pair potential and an RDF target, ``update="ibi"`` replaces the gradient step by
iterative Boltzmann inversion, ``u <- u + alpha kT ln(<g>_theta / g_target)``, with ``<g>_theta``
the same reweighted estimate (so several IBI updates share one simulation): IBI is DiffTRe's
RDF loss with a diagonal (Henderson-inverse) preconditioner, and converges in a few steps.
"""

from __future__ import annotations

import torch

from cgflow.training.trainer import ReweightedSamples, Trainer, n_eff


def reweighted_average(w: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_i w_i O(S_i): weights (n,), per-frame values (n, K) -> (K,)."""
    return (w[:, None] * values).sum(0)


class DiffTRe(Trainer):
    def __init__(self, model, simulate, observables: dict, targets: dict, kT: float, gamma: dict | None = None,
                 threshold: float = 0.9, update: str = "gradient", ibi_alpha: float = 1.0, g_min: float = 0.05,
                 **kwargs) -> None:
        super().__init__(model, **kwargs)
        if update not in ("gradient", "ibi"):
            raise ValueError(f"DiffTRe update must be 'gradient' or 'ibi', got {update!r}")
        if set(observables) != set(targets):
            raise ValueError(f"observables {sorted(observables)} and targets {sorted(targets)} must name the same keys")
        self.observables = observables
        self.targets = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in targets.items()}
        self.gamma = gamma or {k: 1.0 for k in observables}
        self.kT, self.update, self.alpha, self.g_min = kT, update, ibi_alpha, g_min
        self.samples = ReweightedSamples(simulate, kT, threshold)
        self._values = None
        self._values_for = -1

    def _frame_values(self):
        if self._values_for != self.samples.n_simulations:
            self._values = {k: f(self.samples.x) for k, f in self.observables.items()}
            self._values_for = self.samples.n_simulations
        return self._values

    def averages(self):
        w, _ = self.samples.weights(self.model)
        vals = self._frame_values()
        return w, {k: reweighted_average(w, v) for k, v in vals.items()}

    def epoch(self) -> dict:
        self.optimizer.zero_grad()
        w, avg = self.averages()
        loss = sum(self.gamma[k] * ((avg[k] - self.targets[k]) ** 2).sum() for k in avg)
        if self.update == "gradient":
            loss.backward()
            self.optimizer.step()
        else:
            (key,) = avg
            g, target = avg[key].detach(), self.targets[key]
            ok = (g > self.g_min) & (target > self.g_min)
            delta = torch.zeros_like(g)
            delta[ok] = self.alpha * self.kT * torch.log(g[ok] / target[ok])
            with torch.no_grad():
                self.model.u[: len(delta)] += delta[: len(self.model.u)]
        return {"loss": float(loss.detach()), "n_eff": n_eff(w), "simulations": self.samples.n_simulations}
