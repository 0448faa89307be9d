"""The conditional normalising flow ``q(y | s)``: a zuko neural spline flow with standardisation.

zuko's spline transforms act on [-5, 5] and its networks train best on inputs of order one,
so the wrapper :class:`ConditionalFlow` maps ``y`` and ``s`` to standard units with fixed
affine maps (stored as buffers, so they travel in the state dict) and adds the map's
log-Jacobian to the density: ``ln q(y|s) = ln q_std((y - y_loc)/y_scale | (s - s_loc)/s_scale)
- sum ln y_scale``. The scales come from the problem (the box and the CV range), not from data,
because reverse-KL training has no data. A periodic context value (a torsion, rad) enters as
its (sin, cos) instead, so q is periodic in it.

A flow is saved as ``flow.pt`` (the state dict only, loaded with ``weights_only=True``) plus
``flow.json`` (the hyper-parameters that rebuild the module, and any metadata), both written
atomically. This module imports torch and zuko at the top: import it inside functions from
anything that must start fast (the CLI, the Snakefile).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import zuko

from cgflow.io import write_json, write_torch


class ConditionalFlow(torch.nn.Module):
    """``q(y | s)`` over ``features`` generated coordinates given ``context`` CVs.

    ``transforms`` spline layers of ``bins`` bins, each conditioned (autoregressively in y, and
    on s) by an MLP with ``hidden`` widths. Float32 inside; the log-densities it returns are
    float64 so they sit beside float64 energies without losing digits.
    """

    def __init__(self, features: int, context: int, transforms: int = 3, hidden=(64, 64), bins: int = 8,
                 y_loc=None, y_scale=None, s_loc=None, s_scale=None, passes: int | None = None,
                 periodic=None):
        super().__init__()
        self.hparams = {"features": int(features), "context": int(context), "transforms": int(transforms),
                        "hidden": [int(h) for h in hidden], "bins": int(bins)}
        if passes is not None:  # 2: coupling layers, sampled in two passes instead of one per feature
            self.hparams["passes"] = int(passes)
        periodic = [bool(p) for p in (periodic or [False] * context)]
        if len(periodic) != context:
            raise ValueError(f"periodic has {len(periodic)} entries for {context} context values")
        if any(periodic):  # (sin, cos) for these context values
            self.hparams["periodic"] = periodic
        self.periodic = torch.tensor(periodic, dtype=torch.bool)  # in hparams, not the state dict
        self.flow = zuko.flows.NSF(features, context + sum(periodic), bins=bins, transforms=transforms,
                                   hidden_features=tuple(hidden), passes=passes)

        def buffer(value, n, fill):
            v = torch.full((n,), float(fill)) if value is None else torch.as_tensor(value, dtype=torch.float32).reshape(n)
            return v.clone()

        self.register_buffer("y_loc", buffer(y_loc, features, 0.0))
        self.register_buffer("y_scale", buffer(y_scale, features, 1.0))
        self.register_buffer("s_loc", buffer(s_loc, context, 0.0))
        self.register_buffer("s_scale", buffer(s_scale, context, 1.0))
        if (self.y_scale <= 0).any() or (self.s_scale <= 0).any():
            raise ValueError("flow scales must be positive")

    def _context(self, s):
        s = s.to(torch.float32)
        z = (s - self.s_loc) / self.s_scale
        if not self.periodic.any():
            return z
        p = self.periodic
        return torch.cat([z[..., ~p], torch.sin(s[..., p]), torch.cos(s[..., p])], -1)

    def _log_jacobian(self):
        return torch.log(self.y_scale.to(torch.float64)).sum()

    def log_prob(self, y, s):
        """ln q(y | s) for rows of y (n, features) and s (n, context), float64 (n,)."""
        z = (y.to(torch.float32) - self.y_loc) / self.y_scale
        return self.flow(self._context(s)).log_prob(z).to(torch.float64) - self._log_jacobian()

    def rsample_and_log_prob(self, s, n: int | None = None):
        """One reparameterised sample per row of s (n=None), or ``n`` per row (shape (n, len(s), .)).

        Returns y (float64) and ln q(y | s) (float64); differentiable in the flow's parameters.
        """
        shape = () if n is None else (n,)
        z, logq = self.flow(self._context(s)).rsample_and_log_prob(shape)
        y = z.to(torch.float64) * self.y_scale.to(torch.float64) + self.y_loc.to(torch.float64)
        return y, logq.to(torch.float64) - self._log_jacobian()

    def config(self) -> dict:
        """Everything :func:`load_flow` needs to rebuild the module (besides the state dict)."""
        return dict(self.hparams)


def save_flow(flow: ConditionalFlow, pt_path, json_path, meta: dict | None = None) -> None:
    """Write the state dict to ``pt_path`` and hyper-parameters + ``meta`` to ``json_path``, atomically."""
    write_torch(pt_path, flow.state_dict())
    write_json(json_path, {"flow": flow.config(), **(meta or {})})


def load_flow(pt_path, json_path) -> tuple[ConditionalFlow, dict]:
    """Rebuild a flow from ``flow.pt`` (weights only) and ``flow.json``; returns (flow, the JSON)."""
    from cgflow.io import reading

    kind = "flow.json (the flow's settings, written beside flow.pt)"
    with reading(json_path, kind, (ValueError, KeyError, TypeError)):
        info = json.loads(Path(json_path).read_text())
        hparams = info["flow"]
    flow = ConditionalFlow(**hparams)
    flow.load_state_dict(torch.load(pt_path, weights_only=True))
    flow.eval()
    return flow, info
