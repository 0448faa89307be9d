"""Cycle coarse graining (METHODS.md §2): reconstruction and rare-event-free free energies.

A conditional normalising flow ``q(y | s)`` generates the fine-grained degrees of freedom
``y`` orthogonal to the collective variables ``s``. It is trained by the reverse KL to the
exact conditional Boltzmann density ``p(y | s) ∝ exp(-beta U(s, y))``, which needs energies
only (no FG trajectory), and then gives the free energy at every ``s`` independently by
importance sampling, ``exp(-beta F(s)) = E_q[exp(-beta U) / q]``: no barrier is ever crossed.

Only :mod:`~cgflow.reconstruction.flow` and :mod:`~cgflow.reconstruction.alanine` import torch
(and zuko) at module level; import them inside functions. The package covers toy systems with
linear CVs and alanine dipeptide (CVs phi, psi; and hydrogens given the heavy-atom beads).

Modules:

- :mod:`~cgflow.reconstruction.energy`: the FG energy ``U(s, y)`` in torch for toy systems
  with linear CVs, and the exact pointwise PMF by quadrature for checks.
- :mod:`~cgflow.reconstruction.alanine`: Z-matrix maps of alanine dipeptide (given ICs s,
  generated ICs y, X-H bonds fixed) with their log-Jacobians, and the OpenMM energy in torch
  (``ZMatrixEnergy``: the same interface as ``ToyEnergy``).
- :mod:`~cgflow.reconstruction.backmap`: all-atom structures: the (phi, psi) flow's ensemble
  resampled by importance weights (``backmapped.dcd``), and hydrogens on heavy-atom beads.
- :mod:`~cgflow.reconstruction.flow`: the conditional flow (zuko NSF) with built-in
  standardisation, saved as ``flow.pt`` (state dict) + ``flow.json`` (hyper-parameters).
- :mod:`~cgflow.reconstruction.training`: reverse-KL (+ optional forward-NLL) training with
  checkpoints that a killed run resumes from.
- :mod:`~cgflow.reconstruction.free_energy`: the per-point estimator with effective sample
  size, bootstrap error, trust flag and mean force.
- :mod:`~cgflow.reconstruction.plots`: the CCG figure (F against the exact PMF, untrusted
  points marked, ESS per point).
- :mod:`~cgflow.reconstruction.campaign`: the workflow entry points (``cgflow reconstruct``,
  ``cgflow ccg-fes``).
"""
