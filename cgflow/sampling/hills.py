"""Well-tempered hills on top of a round's CG bias: a metadynamics layer within each round.

A round's CG bias is fixed for the whole round, and where it is wrong the round loses its FG
steps: a basin found during the round carries no bias (the CG models disagree there) while the
known basins are filled, so the walkers pour into it and stay; the ring just beyond the data,
where the bias falls to zero, traps them the same way. With ``guidance.hills`` the walkers of a
round deposit Gaussians every ``interval`` steps at their CVs into one grid H they all feel
(shared across processes under MPI), with the well-tempered height

    h = height * exp(-(V_cg(s) + H(s)) / ((gamma - 1) kT)),

tempered by the whole bias: where the CG bias already fills to the well-tempered level the
layer adds little, where it is missing the layer builds it within the round. H starts at zero
every round; the next round's CG bias learns from what the hills let the walkers find, and where
the CG ensemble is not trusted yet (a basin found late in the round) the next bias keeps the one
this round ended with (cgflow.guidance.campaign), so the basin does not turn back into a pit.

Between two depositions the bias V_cg + H_j is fixed, so each deposition interval j of a
round is a thermodynamic state of its own for the reweighting (TRAM or MBAR), as a round is
without hills. ``hills.npz`` (beside the round's samples) holds everything needed: the CG
grid and H after each deposition. A frame saved at production step t (after ``equilibration``
steps) belongs to interval (t + equilibration - 1) // interval: frames are saved before the
deposition at the same step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cgflow.guidance.bias import BiasGrid
from cgflow.io import write_npz

FILE = "hills.npz"


@dataclass(frozen=True)
class HillSettings:
    """Gaussian height (kJ/mol, before tempering), widths (CV units), steps between depositions,
    the bias factor gamma and kT (kJ/mol)."""

    height: float
    width: tuple[float, ...]
    interval: int
    gamma: float
    kT: float

    @classmethod
    def from_campaign(cls, campaign) -> "HillSettings | None":
        """The campaign's ``guidance.hills``, or None when the layer is off (height 0)."""
        from cgflow.analysis.campaign import cv_domain

        h = campaign.guidance.hills
        if not h["height"]:
            return None
        lower, upper, _ = cv_domain(campaign)
        width = tuple(h.get("width") or (hi - lo) / 20 for lo, hi in zip(lower, upper))
        return cls(float(h["height"]), width, int(h["interval"]), float(campaign.guidance.gamma),
                   float(campaign.sampling.kT))

    def as_dict(self) -> dict:
        return {**asdict(self), "width": list(self.width)}


class Hills:
    """The CG grid of a round and the hills deposited on it so far (H after each deposition)."""

    def __init__(self, base: BiasGrid, settings: HillSettings, history: np.ndarray | None = None):
        self.base, self.settings = base, settings
        self.history = [np.zeros_like(base.values)] if history is None else list(history)
        self._total = None

    @property
    def values(self) -> np.ndarray:
        return self.history[-1]

    def total(self) -> BiasGrid:
        """The bias the walkers feel now: the CG grid plus the hills."""
        if self._total is None:
            self._total = _grid(self.base, self.base.values + self.values)
        return self._total

    def deposit(self, centres: np.ndarray) -> None:
        """One Gaussian at each of ``centres`` (n, d), in order, each tempered by the bias before it."""
        s, b = self.settings, self.base
        H = self.values.copy()
        for centre in b.fold(np.asarray(centres, dtype=float)):
            here = float(_grid(b, b.values + H)(centre[None])[0])
            height = s.height * math.exp(-here / ((s.gamma - 1) * s.kT))
            gauss = np.ones_like(H)
            for i, (axis, c, w, p) in enumerate(zip(b.axes, centre, s.width, b.periodic)):
                d = axis - c
                if p:
                    period = b.upper[i] - b.lower[i]
                    d = d - period * np.round(d / period)
                shape = [1] * H.ndim
                shape[i] = -1
                gauss = gauss * np.exp(-0.5 * (d / w) ** 2).reshape(shape)
            H += height * gauss
        for i, p in enumerate(b.periodic):
            if p:  # OpenMM's periodic splines need the ends equal to the last bit
                last = [slice(None)] * H.ndim
                last[i] = -1
                H[tuple(last)] = np.take(H, 0, axis=i)
        self.history.append(H)
        self._total = None

    def restore(self, path: Path) -> None:
        """Take the hills deposited so far from a checkpoint written by :meth:`save`."""
        self.history = Hills.load(path)[0].history
        self._total = None

    # --- files -----------------------------------------------------------------------------
    def save(self, path: Path, equilibration: int) -> None:
        """``hills.npz``: the CG grid (``base``), H after 0, 1, ... depositions (``hills``,
        kJ/mol), the grid's domain and the settings."""
        b = self.base
        write_npz(path, base=b.values, hills=np.array(self.history), names=np.array(b.names),
                  lower=np.array(b.lower), upper=np.array(b.upper), periodic=np.array(b.periodic),
                  height=self.settings.height, width=np.array(self.settings.width),
                  interval=self.settings.interval, gamma=self.settings.gamma, kT=self.settings.kT,
                  equilibration=equilibration)

    @classmethod
    def load(cls, path: Path) -> tuple["Hills", int]:
        """The hills of a ``hills.npz`` and the equilibration steps of its round."""
        with np.load(path, allow_pickle=False) as d:
            base = BiasGrid(tuple(str(n) for n in d["names"]), tuple(map(float, d["lower"])),
                            tuple(map(float, d["upper"])), tuple(map(bool, d["periodic"])), d["base"].astype(float))
            settings = HillSettings(float(d["height"]), tuple(map(float, d["width"])), int(d["interval"]),
                                    float(d["gamma"]), float(d["kT"]))
            return cls(base, settings, d["hills"].astype(float)), int(d["equilibration"])


def _grid(base: BiasGrid, values: np.ndarray) -> BiasGrid:
    return BiasGrid(base.names, base.lower, base.upper, base.periodic, values, base.meta)


@dataclass(frozen=True)
class RoundStates:
    """The thermodynamic states of a round sampled with hills: one per deposition interval."""

    grids: list[BiasGrid]  # the bias of interval j: the CG grid plus H after j depositions
    interval: int
    equilibration: int

    @classmethod
    def load(cls, path: Path) -> "RoundStates":
        hills, eq = Hills.load(path)
        return cls([_grid(hills.base, hills.base.values + H) for H in hills.history], hills.settings.interval, eq)

    def interval_of(self, step: np.ndarray) -> np.ndarray:
        """The deposition interval each frame (production step, > 0) was saved in."""
        index = (np.asarray(step, dtype=np.int64) + self.equilibration - 1) // self.interval
        if len(index) and index.max() >= len(self.grids):
            raise ValueError(f"a frame at production step {int(np.max(step))} is past the last deposition interval "
                             f"({len(self.grids)} of {self.interval} steps): the hills file belongs to another run")
        return index


def run_with_hills(system, groups: list[list[int]], settings, platform: str, properties: dict, seeds: list[int],
                   workdir: Path, hills: Hills, starts: list, record_forces: bool, progress=None, comm=None):
    """Run (or resume) this process's replicas in step, depositing every walker's hills into
    ``hills`` every ``interval`` steps (gathered over ``comm``'s ranks, in walker order);
    return their frames. ``hills-<step>.npz`` in ``workdir`` checkpoints H after every
    chunk of all replicas; a restart rolls every replica back to the last one all ranks hold."""
    from cgflow.sampling.engine import Replica, chunk_ends

    total, interval = settings.equilibration + settings.steps, hills.settings.interval
    saved = sorted(workdir.glob("hills-*.npz"))
    resume = int(saved[-1].stem.split("-")[1]) if saved else 0
    if comm is not None:
        from mpi4py import MPI

        resume = comm.allreduce(resume, op=MPI.MIN)
    for later in [p for p in saved if int(p.stem.split("-")[1]) > resume]:
        later.unlink()  # as the replicas' later chunks are: a hills file must never outlive them
    if resume:
        hills.restore(workdir / f"hills-{resume:010d}.npz")
    bias = hills.total()
    replicas = [Replica(system, group, settings, platform, properties, seed, workdir / f"replica-{group[0]:05d}",
                        bias, start, record_forces, resume_at=resume)
                for group, seed, start in zip(groups, seeds, starts)]
    if any(r.step != resume for r in replicas):
        raise RuntimeError(f"{workdir}: the replicas' checkpoints do not match the hills checkpoint at step {resume}")
    if progress is not None:
        for r in replicas:
            progress.start(r.walkers, resume)
    deposits = set(range(interval, total, interval))
    checkpoints = set(chunk_ends(settings))
    for end in sorted(deposits | checkpoints):
        if end <= resume:
            continue
        for r in replicas:
            r.advance(end)
        if end in deposits:
            centres = np.concatenate([r.cv() for r in replicas]) if replicas else np.zeros((0, len(hills.base.names)))
            if comm is not None:
                centres = np.concatenate(comm.allgather(centres))
            hills.deposit(centres)
            for r in replicas:
                r.set_bias(hills.total())
        if end in checkpoints:
            for r in replicas:
                wall = r.save_chunk()
                if progress is not None:
                    progress(r.walkers, end, total, wall)
            hills.save(workdir / f"hills-{end:010d}.npz", settings.equilibration)
    return [r.frames() for r in replicas]
