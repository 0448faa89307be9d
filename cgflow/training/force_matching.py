"""Force matching (multiscale CG, METHODS §3): ``L = < |F_theta(M R) - M_f f(R)|^2 >``.

Only the mean force is learnable, so the loss floor (the FG force noise) is large; that is
normal. Biased FG data is fine for force matching as long as the *unbiased* FG forces are
mapped (the bias acts on the CVs, not in ``f``) and the biased ensemble covers the CG space:
for a model that can represent it, the minimiser is the mean force at every sampled ``r``,
whatever the sampling density, so the frames are not reweighted. A model that cannot is
fitted where the frames are dense, i.e. under the biased ensemble (the bead-CG stage's
unbiased weights serve its prior, replica starts and FES, not this loss).
Inputs of any shape (n_frames, ...): the model maps them to energies (n_frames,).
"""

from __future__ import annotations

import torch

from cgflow.training.trainer import Trainer


def model_forces(model, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=create_graph)
    return -g


class ForceMatching(Trainer):
    def __init__(self, model, x, forces, batch_size: int = 256, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(model, **kwargs)
        n = len(x)
        perm = torch.randperm(n, generator=self.generator)
        n_val = max(1, int(val_fraction * n))
        self.val, self.train = perm[:n_val], perm[n_val:]
        self.x, self.f = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(forces, dtype=torch.float64)
        self.batch_size = batch_size

    def loss(self, idx, create_graph=True) -> torch.Tensor:
        pred = model_forces(self.model, self.x[idx], create_graph)
        return ((pred - self.f[idx]) ** 2).flatten(1).mean()

    def epoch(self) -> dict:
        order = self.train[torch.randperm(len(self.train), generator=self.generator)]
        total = 0.0
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            self.optimizer.zero_grad()
            loss = self.loss(idx)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(idx)
        val = self.loss(self.val, create_graph=False).item()
        return {"loss": total / len(order), "val_loss": val}
