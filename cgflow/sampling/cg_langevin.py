"""CG Langevin dynamics in CV space, in torch, for many replicas at once.

The dynamics is overdamped (Brownian): with mass 1 and friction ``gamma`` (1/ps),
``dx = -(1/gamma) grad U dt + sqrt(2 kT/gamma) dW``, so a time step ``dt`` (ps) enters only as
``h = dt/gamma`` (CV units² per kJ/mol): a step drifts x by ``-h grad U`` and diffuses it by
``2 kT h`` (variance). Energies are kJ/mol, CVs in their own units (nm, rad). The integrator is
the Leimkuhler–Matthews scheme, the high-friction limit of BAOAB:
``x_{n+1} = x_n - h grad U(x_n) + sqrt(kT h / 2) (xi_n + xi_{n+1})``, one force per step,
whose stationary distribution matches exp(-U/kT) to O(h²) rather than Euler–Maruyama's O(h).
The carried noise ``xi_n`` is BAOAB's momentum; a call does not return it, so each call starts
with fresh noise and a first step of half the drift, which is exactly BAOAB after a full
momentum refresh. Short calls therefore chain without error (a full first step would sample at
kT (1 - 1/(4n)) for calls of n steps, e.g. half the temperature for one-step calls).

Periodic CVs are wrapped into [lower, upper). Non-periodic CVs are reflected at the walls,
and the reflected coordinate's carried noise ``xi_n`` is negated with it, so the reflected
walk is the mirror image of a free one and a flat potential stays exactly flat up to the wall.
Used for the model average of maximum-likelihood training and for CG MD.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch


def langevin(
    energy_fn: Callable[["torch.Tensor"], "torch.Tensor"],
    x0: "torch.Tensor",
    kT: float,
    dt: float,
    friction: float,
    n_steps: int,
    lower: Sequence[float],
    upper: Sequence[float],
    periodic: Sequence[bool],
    generator: "torch.Generator",
) -> "torch.Tensor":
    """Run ``n_steps`` of overdamped Langevin dynamics from ``x0`` (R, d); return the positions (R, d).

    ``energy_fn`` maps positions (R, d) to energies (R,) in kJ/mol and must be differentiable.
    ``kT`` in kJ/mol, ``dt`` in ps and ``friction`` in 1/ps (mass 1): the step is
    ``h = dt/friction``. ``generator`` (on x0's device) draws all noise, so a seeded one
    repeats the run. Raises RuntimeError when an energy or force is not finite or a replica
    lands more than one box width outside [lower, upper] in one step (h too large).
    """
    import torch

    if not (kT > 0 and dt > 0 and friction > 0 and n_steps >= 0):
        raise ValueError(f"need kT, dt, friction > 0 and n_steps >= 0, got {kT}, {dt}, {friction}, {n_steps}")
    if x0.dim() != 2 or x0.shape[1] != len(periodic) or not len(lower) == len(upper) == len(periodic):
        raise ValueError(f"x0 must be (R, d) with one lower, upper and periodic entry per CV, got {tuple(x0.shape)}")
    opts = {"dtype": x0.dtype, "device": x0.device}
    lo, hi = torch.tensor(lower, **opts), torch.tensor(upper, **opts)
    width = hi - lo
    wrap = torch.tensor(periodic, dtype=torch.bool, device=x0.device)
    h = dt / friction
    noise_scale = math.sqrt(kT * h / 2)

    x = x0.detach().clone()
    xi = torch.randn(x.shape, generator=generator, **opts)
    for step in range(n_steps):
        xi_next = torch.randn(x.shape, generator=generator, **opts)
        drift = h / 2 if step == 0 else h
        x = x - drift * _gradient(energy_fn, x, step) + noise_scale * (xi + xi_next)
        xi = xi_next
        outside = torch.maximum(lo - x, x - hi)
        if (outside > width).any():
            replica = int((outside > width).any(dim=1).nonzero()[0])
            raise RuntimeError(
                f"CG Langevin blew up at step {step}: replica {replica} moved to {x[replica].tolist()}, more than "
                f"a box width outside [{list(lower)}, {list(upper)}]; lower dt/friction (now {h:g})"
            )
        x = torch.where(wrap, lo + torch.remainder(x - lo, width), x)
        x = torch.where(wrap & (x >= hi), x - width, x)  # rounding can land exactly on upper
        reflected = ~wrap & ((x < lo) | (x > hi))
        x = torch.where(~wrap & (x < lo), 2 * lo - x, x)
        x = torch.where(~wrap & (x > hi), 2 * hi - x, x)
        xi = torch.where(reflected, -xi, xi)
    return x


def _gradient(energy_fn, x: "torch.Tensor", step: int) -> "torch.Tensor":
    """dU/dx of every replica; RuntimeError naming the first replica whose energy or force is not finite."""
    import torch

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = energy_fn(x)
        if energy.shape != x.shape[:1]:
            raise ValueError(f"energy_fn must return one energy per replica ({x.shape[0]},), got {tuple(energy.shape)}")
        (grad,) = torch.autograd.grad(energy.sum(), x)
    bad = ~(torch.isfinite(energy) & torch.isfinite(grad).all(dim=1))
    if bad.any():
        replica = int(bad.nonzero()[0])
        raise RuntimeError(
            f"CG Langevin: energy or force is not finite at step {step} for replica {replica} "
            f"(x = {x[replica].tolist()}, U = {energy[replica].item()} kJ/mol)"
        )
    return grad
