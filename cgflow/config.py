"""The campaign config: validation against the JSON-schema, defaults, and a typed view.

One function, :func:`load_config`, is the only way a config enters cgflow: the Snakefile
calls it before any job starts, and every ``cgflow`` subcommand calls it on the resolved
``results/<campaign>/config.yaml``. A bad value raises :class:`ConfigError` with one sentence
that names the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from cgflow.io import config_hash

KB = 0.0083144626181532  # kJ/mol/K
RESERVED_COLUMNS = {"walker", "step", "time_ps", "potential_energy_kJmol", "bias_energy_kJmol",
                    "x_nm", "y_nm", "z_nm", "round", "weight"}
MOLECULE_CVS = ("phi", "psi")
REFERENCE_METHODS = ("exact", "none", "metadynamics_long")
"""``analysis.reference`` values that name a method; any other value is a fes.csv path."""
MAX_GRID_POINTS = 2_000_000
"""The most points (or cells) a grid over the CVs may have: analysis bins, the quadrature, bias and
Markov grids."""


class ConfigError(ValueError):
    """A config value that cgflow cannot run with; the message is one sentence for the user."""


def schema() -> dict:
    import yaml

    text = resources.files("cgflow").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


# --- schema validation ---------------------------------------------------------------------
def _fill_defaults(instance: dict, sch: dict) -> None:
    for key, sub in sch.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and "properties" in sub:
            _fill_defaults(instance[key], sub)


def _coerce_strings(instance: Any, sch: dict, root: dict) -> Any:
    """Read a string as YAML where the schema wants a number or boolean and no string.

    ``snakemake --config 'sampling={walkers: 8}'`` parses nested values with YAML's BaseLoader,
    so they arrive as strings ('8'); a string that reads as a value of the wanted type becomes
    that value, anything else is left for the schema to reject.
    """
    if "$ref" in sch:
        sch = root["$defs"][sch["$ref"].rsplit("/", 1)[-1]]
    branches = [sch, *sch.get("oneOf", []), *sch.get("anyOf", [])]
    branches = [root["$defs"][b["$ref"].rsplit("/", 1)[-1]] if "$ref" in b else b for b in branches]
    if isinstance(instance, str):
        wanted = {b.get("type") for b in branches}
        if "string" in wanted or not wanted & {"integer", "number", "boolean"}:
            return instance
        import yaml

        try:
            value = yaml.safe_load(instance)
        except yaml.YAMLError:
            return instance
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if (("integer" in wanted and is_int) or ("number" in wanted and (is_int or isinstance(value, float)))
                or ("boolean" in wanted and isinstance(value, bool))):
            return value
        return instance
    for b in branches:
        if isinstance(instance, dict) and "properties" in b:
            for key, sub in b["properties"].items():
                if key in instance:
                    instance[key] = _coerce_strings(instance[key], sub, root)
        if isinstance(instance, list) and "items" in b:
            instance[:] = [_coerce_strings(item, b["items"], root) for item in instance]
    return instance


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "the config"


def _format(error) -> str:
    key = _where(error.absolute_path)
    v, val, sch = error.validator, error.instance, error.schema
    if v == "additionalProperties":
        allowed = sorted(sch.get("properties", {}))
        extra = sorted(set(val) - set(allowed))
        name = f"{key}.{extra[0]}" if error.absolute_path else str(extra[0])
        return f"{name}: unknown key; allowed keys here: {', '.join(allowed)}"
    if v == "required":
        missing = [k for k in error.validator_value if k not in val][0]
        name = f"{key}.{missing}" if error.absolute_path else missing
        what = sch.get("properties", {}).get(missing, {}).get("description")
        return f"{name}: missing; this key is required" + (f" ({' '.join(str(what).split())})" if what else "")
    if v == "enum":
        return f"{key}: {_short(val)} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if v == "type":
        return f"{key}: {_short(val)} must be of type {error.validator_value}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if v in bounds:
        return f"{key}: {_short(val)} is not allowed; it must be {bounds[v]} {error.validator_value}"
    if v in ("minItems", "maxItems", "minProperties", "maxProperties"):
        word = "at least" if v.startswith("min") else "at most"
        n = error.validator_value
        noun = ("item" if v.endswith("Items") else "key") + ("" if n == 1 else "s")
        return f"{key}: {_short(val)} must have {word} {n} {noun}"
    if v in ("minLength",):
        return f"{key}: must not be empty"
    if v == "pattern" and "propertyNames" in error.relative_schema_path:
        return (f"{key}: the name {val!r} is not allowed; a name must be letters, digits and _, "
                "not starting with a digit")
    if v == "pattern":
        return f"{key}: {_short(val)} is not allowed; expected {sch.get('description', error.message)}"
    return f"{key}: {error.message}"


def _validate_schema(config: dict) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import relevance

    sch = schema()
    errors = list(Draft202012Validator(sch).iter_errors(config))
    if errors:
        top = max(errors, key=relevance)
        err = _descend_of(top)
        if err.validator in ("oneOf", "anyOf"):
            # no single branch fits the value's type: say what the key expects as a whole
            raise ConfigError(f"{_where(top.absolute_path)}: {_short(top.instance)} is not allowed; "
                              f"expected {_describe_of(sch, top.absolute_path)}")
        if err is not top and err.validator == "enum":  # e.g. seed_cells: many -> auto, or an integer
            allowed = [", ".join(map(str, b["enum"])) if "enum" in b else _type_words(b) for b in top.validator_value]
            raise ConfigError(f"{_where(top.absolute_path)}: {_short(top.instance)} is not allowed; "
                              f"allowed: {' or '.join(allowed)}")
        raise ConfigError(_format(err))


def _type_words(branch: dict) -> str:
    """'an integer >= 1 and <= 64' from a schema branch."""
    kind = branch.get("type", "value")
    bounds = [f"{op} {branch[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                 ("exclusiveMaximum", "<")) if k in branch]
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" + (f" {' and '.join(bounds)}" if bounds else "")


def _fitting_branches(err) -> list[list]:
    """The branches of a failed oneOf/anyOf whose type fits the value, each as its list of errors."""
    branches: dict = {}
    for e in err.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)

    def fits(errs) -> bool:
        for e in errs:
            if len(e.relative_path) == 0 and (
                e.validator == "type" or (e.validator in ("oneOf", "anyOf") and not _fitting_branches(e))
            ):
                return False
        return True

    return [errs for errs in branches.values() if fits(errs)]


def _descend_of(err):
    """From a failed oneOf/anyOf to the error inside the one branch that fits the value's type
    (e.g. bins: 1 -> "must be >= 2"); the oneOf itself when none or several branches fit."""
    from jsonschema.exceptions import relevance

    while err.validator in ("oneOf", "anyOf"):
        fitting = _fitting_branches(err)
        if len(fitting) != 1:
            return err
        err = max(fitting[0], key=relevance)
    return err


def _describe_of(sch: dict, path) -> str:
    node = sch
    for p in path:
        if isinstance(p, int):
            return "a valid list item"
        node = node.get("properties", {}).get(p, {})
    return " ".join(str(node.get("description", "a value of the documented form")).split())


# --- typed view ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingConfig:
    temperature: float
    timestep: float
    friction: float
    walkers: int
    steps: int
    equilibration: int
    report_interval: int
    checkpoint_interval: int
    platform: str
    pin_cpu: bool

    @property
    def kT(self) -> float:
        """kT in kJ/mol."""
        return KB * self.temperature


@dataclass(frozen=True)
class AnalysisConfig:
    bins: tuple[int, ...]
    reference: str
    bootstrap: int
    rmse_cutoff_kT: float
    peers: tuple[str, ...]
    metadynamics: dict
    budget_points: int

    @property
    def reference_file(self) -> str | None:
        """The user's reference fes.csv (an absolute path), or None when a method gives the reference."""
        return None if self.reference in REFERENCE_METHODS else self.reference


@dataclass(frozen=True)
class GuidanceConfig:
    rounds: int
    gamma: float
    ensemble: int
    hidden: tuple[int, ...]
    train_steps: int
    learning_rate: float
    model_average: str
    model_grid: int
    bias_grid: int
    bias_basis: int
    bias_steps: int
    e0: float
    e1: float
    estimator: str
    markov_bins: int
    markov_lag: float
    min_frames: int
    level_memory: int
    overfill: float
    seed_fraction: float
    seed_cells: int  # resolved from 'auto'
    initial_bias: str | None = None
    hills: dict | None = None  # height (0: off), width, interval
    barrier: float | None = None


@dataclass(frozen=True)
class SystemConfig:
    type: str
    cvs: tuple[tuple[str, str], ...]  # (column name, expression)
    energy: str | None = None
    potential: str | None = None
    box: dict | None = None
    mass: float = 1.0
    start: dict | None = None
    solvent: str = "vacuum"

    @property
    def cv_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.cvs)

    @property
    def is_toy(self) -> bool:
        return self.type == "toy"

    def build(self):
        """The FG system object (ToySystem or AlanineDipeptide)."""
        if self.is_toy:
            from cgflow.systems.toy import CV, ToySystem

            return ToySystem(
                energy=self.energy,
                cvs=tuple(CV(n, e) for n, e in self.cvs),
                box={k: tuple(v) for k, v in self.box.items()},
                mass=self.mass,
                start=self.start,
            )
        from cgflow.systems.alanine import AlanineDipeptide

        return AlanineDipeptide(solvent=self.solvent, cvs=self.cv_names)


@dataclass(frozen=True)
class CGConfig:
    """The optional ``cg:`` section (bead CG potentials); see config/README.md."""

    map: str
    objectives: tuple[str, ...]
    fg_data: str
    fg_steps: int
    fg_stride: int
    prior: tuple[str, ...]
    network: str
    hidden: tuple[int, ...]
    n_rbf: int
    fm_epochs: int
    fm_lr: float
    fm_batch_size: int
    patience: int
    re_epochs: int
    re_lr: float
    re_sim_steps: int
    re_equilibration_steps: int
    re_replicas: int
    n_eff_threshold: float
    re_max_reuse: int
    md_timestep: float
    md_friction: float
    md_steps: int
    md_replicas: int
    md_precision: str
    md_compile: bool
    md_device: str

    def trainer_settings(self) -> dict:
        """The nested settings :func:`cgflow.training.bead_campaign.train` takes."""
        return {"fm": {"batch_size": self.fm_batch_size, "lr": self.fm_lr, "epochs": self.fm_epochs,
                       "patience": self.patience},
                "re": {"lr": self.re_lr, "epochs": self.re_epochs, "sim_steps": self.re_sim_steps,
                       "replicas": self.re_replicas, "report_interval": max(1, self.re_sim_steps // 20),
                       "equilibration": self.re_equilibration_steps, "max_reuse": self.re_max_reuse},
                "md": {"timestep": self.md_timestep, "friction": self.md_friction, "precision": self.md_precision,
                       "compile": self.md_compile, "device": self.md_device},
                "n_eff_threshold": self.n_eff_threshold}


@dataclass(frozen=True)
class CCGConfig:
    """The optional ``ccg:`` section (cycle coarse graining, METHODS.md §2); see config/README.md."""

    transforms: int
    hidden: tuple[int, ...]
    bins: int
    steps: int
    batch: int
    lr: float
    conditioning: str
    nll_weight: float
    checkpoint_interval: int
    samples_per_point: int
    grid_points: tuple[int, ...]
    min_ess_fraction: float
    min_ess: float
    bootstrap: int
    max_pareto_k: float | None = None
    passes: int | None = None
    backmap_frames: int = 200
    backmap_proposals: int = 4000
    backmap_max_F: float = 20.0

    @property
    def needs_fg_samples(self) -> bool:
        """Whether training reads the rounds' FG frames (samples conditioning or a forward NLL)."""
        return self.conditioning == "samples" or self.nll_weight > 0


@dataclass(frozen=True)
class Campaign:
    """The validated campaign config; ``resolved`` is the dict with every default filled in."""

    resolved: dict

    @property
    def name(self) -> str:
        return self.resolved["campaign"]

    @property
    def seed(self) -> int:
        return self.resolved["seed"]

    @cached_property
    def hash(self) -> str:
        return config_hash(self.resolved)

    def stage_hash(self, stage: str) -> str:
        """Hash of the config keys a stage's result depends on (so e.g. analysis-only edits
        do not rerun or invalidate sampling). ``guidance`` covers the biased rounds (training,
        bias, later sampling); the number of rounds is left out, so adding rounds keeps the
        earlier ones, and so is ``sampling.checkpoint_interval``, so checkpointing more often on a
        preemptible queue keeps the finished rounds. ``ccg`` covers the reconstruction flow (not
        its estimation keys); ``cg_data`` the bead-CG stage's FG data, ``cg`` its models."""
        if stage in ("cg_data", "cg"):
            c = self.resolved["cg"]
            data = {k: c[k] for k in ("fg_data", "fg_steps", "fg_stride", "map")}
            return config_hash({"sampling": self.stage_hash("guidance" if c["fg_data"] == "rounds" else "sampling"),
                                "rounds": self.guidance.rounds if c["fg_data"] == "rounds" else None,
                                **({"data": data} if stage == "cg_data" else
                                   {"cg": {k: v for k, v in c.items() if k != "objectives"}})})
        if stage == "ccg":  # the flow depends on the energy, temperature, flow and training keys only
            c = self.resolved["ccg"]
            return config_hash({"seed": self.seed, "system": self.resolved["system"],
                                "temperature": self.resolved["sampling"]["temperature"],
                                "flow": c["flow"], "train": c["train"]})
        keys = {"sampling": ("seed", "system", "sampling"), "guidance": ("seed", "system", "sampling", "guidance")}
        chosen = {k: self.resolved[k] for k in keys[stage]}
        # how often a run checkpoints does not change what it samples (the work folder's manifest keeps it)
        chosen["sampling"] = {k: v for k, v in chosen["sampling"].items() if k != "checkpoint_interval"}
        if "guidance" in chosen:
            chosen["guidance"] = {k: v for k, v in chosen["guidance"].items() if k != "rounds"}
        return config_hash(chosen)

    @cached_property
    def system(self) -> SystemConfig:
        s = self.resolved["system"]
        return SystemConfig(
            type=s["type"],
            cvs=_cv_items(s["cv"]),
            energy=_toy_energy(s) if s["type"] == "toy" else None,
            potential=s.get("potential"),
            box=s.get("box"),
            mass=s.get("mass", 1.0),
            start=s.get("start"),
            solvent=s.get("solvent", "vacuum"),
        )

    @cached_property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**self.resolved["sampling"])

    @cached_property
    def analysis(self) -> AnalysisConfig:
        a = dict(self.resolved["analysis"])
        bins = a.pop("bins")
        n = len(self.system.cvs)
        a["bins"] = tuple(bins) if isinstance(bins, list) else (bins,) * n
        a["peers"] = tuple(a["peers"])
        return AnalysisConfig(**a)

    @cached_property
    def guidance(self) -> GuidanceConfig:
        g = dict(self.resolved["guidance"])
        g["hidden"] = tuple(g["hidden"])
        if g["seed_cells"] == "auto":
            n_cvs, walkers = len(self.system.cvs), self.sampling.walkers
            g["seed_cells"] = max([1] + [n for n in range(2, 5) if 2 * n**n_cvs <= walkers])
        return GuidanceConfig(**g)

    @cached_property
    def cg(self) -> CGConfig | None:
        """The bead-CG stage's settings, or None when the config has no ``cg:`` section."""
        c = self.resolved.get("cg")
        if c is None:
            return None
        c = dict(c)
        for key in ("objectives", "prior", "hidden"):
            c[key] = tuple(c[key])
        return CGConfig(**c)

    @cached_property
    def ccg(self) -> CCGConfig | None:
        """The cycle-coarse-graining stage's settings, or None without a ``ccg:`` section."""
        c = self.resolved.get("ccg")
        if c is None:
            return None
        e, b = c["estimate"], c["backmap"]
        grid = e["grid_points"]
        return CCGConfig(transforms=c["flow"]["transforms"], hidden=tuple(c["flow"]["hidden"]), bins=c["flow"]["bins"],
                         **c["train"], samples_per_point=e["samples_per_point"],
                         grid_points=tuple(grid) if isinstance(grid, list) else (grid,) * len(self.system.cvs),
                         min_ess_fraction=e["min_ess_fraction"], min_ess=e["min_ess"], bootstrap=e["bootstrap"],
                         max_pareto_k=e.get("max_pareto_k"), passes=c["flow"].get("passes"),
                         backmap_frames=b["frames"], backmap_proposals=b["proposals"], backmap_max_F=b["max_F_kJmol"])

    @property
    def records_forces(self) -> bool:
        """Whether the sampling rounds also write their frames' FG forces (the cg stage learns from them)."""
        return self.cg is not None and self.cg.fg_data == "rounds"

    @property
    def rounds(self) -> list[int]:
        """All sampling rounds, 0..N."""
        return list(range(self.guidance.rounds + 1))


def _toy_energy(s: dict) -> str:
    if "energy" in s:
        return s["energy"]
    from cgflow.systems.toy import BUILTINS

    return BUILTINS[s["potential"]].energy


def _cv_items(cv) -> tuple[tuple[str, str], ...]:
    items = cv if isinstance(cv, list) else [cv]
    out = []
    unnamed = [i for i in items if isinstance(i, str) and not i.isidentifier()]
    for item in items:
        if isinstance(item, dict):
            (name, expr), = item.items()
        elif item.isidentifier():
            name, expr = item, item
        else:
            name = "cv" if len(unnamed) == 1 else f"cv{unnamed.index(item) + 1}"
            expr = item
        out.append((name, expr))
    return tuple(out)


# --- semantic checks ---------------------------------------------------------------------------
def _check_toy(s: dict) -> None:
    from cgflow.systems.expression import ExpressionError, parse
    from cgflow.systems.toy import BUILTINS

    if "solvent" in s:
        raise ConfigError(f"system.solvent: {_short(s['solvent'])} is not allowed for a toy system; "
                          "solvent is only for alanine_dipeptide")
    if ("potential" in s) == ("energy" in s):
        given = (f"both potential ({_short(s['potential'])}) and energy ({_short(s['energy'])}) are given"
                 if "potential" in s else "neither potential nor energy is given")
        raise ConfigError(
            f"system: {given}; give exactly one of potential (built-in: "
            f"{', '.join(BUILTINS)}) or energy (an OpenMM expression in x, y, z)"
        )
    if "potential" in s:
        builtin = BUILTINS[s["potential"]]
        s.setdefault("box", {k: list(v) for k, v in builtin.box.items()})
        s.setdefault("cv", list(builtin.cv) if len(builtin.cv) > 1 else builtin.cv[0])
    else:
        try:
            energy = parse(s["energy"])
        except ExpressionError as exc:
            raise ConfigError(f"system.energy: {_short(s['energy'])} is not a valid expression: {exc}") from None
        if not energy.variables:
            raise ConfigError(f"system.energy: {_short(s['energy'])} depends on none of x, y, z")
        _check_openmm_accepts(s["energy"])
        for key in ("cv", "box"):
            if key not in s:
                raise ConfigError(f"system.{key}: missing; an energy expression needs its {key} "
                                  + ("(e.g. x or [x, y])" if key == "cv" else "(e.g. {x: [-2, 2]})"))
    names = set()
    for name, expr in _cv_items(s["cv"]):
        try:
            fn = parse(expr)
        except ExpressionError as exc:
            raise ConfigError(f"system.cv: {_short(expr)} is not a valid CV: {exc}") from None
        if not fn.variables:
            raise ConfigError(f"system.cv: {_short(expr)} names no coordinate; allowed: x, y, z or an expression in them")
        _check_openmm_accepts(expr, "system.cv")
        if name in names:
            raise ConfigError(f"system.cv: the column name {name!r} is used twice; name each CV with {{name: expression}}")
        if name in RESERVED_COLUMNS:
            raise ConfigError(f"system.cv: the column name {name!r} is reserved ({', '.join(sorted(RESERVED_COLUMNS))}); "
                              "name the CV with {name: expression}")
        names.add(name)
    for key, (lo, hi) in s["box"].items():
        if not lo < hi:
            raise ConfigError(f"system.box.{key}: {[lo, hi]} is not allowed; it must be [low, high] with low < high")
    _check_box(s)


def _check_openmm_accepts(energy: str, key: str = "system.energy") -> None:
    """OpenMM compiles the same text for sampling (energy) and for the CV bias (cv)."""
    import openmm

    system = openmm.System()
    system.addParticle(1.0)
    force = openmm.CustomExternalForce(energy)
    force.addParticle(0, [])
    system.addForce(force)
    try:
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions([openmm.Vec3(0.1, 0.2, 0.3)])
        context.getState(getEnergy=True)
    except Exception as exc:  # OpenMM raises a bare Exception for Lepton errors
        raise ConfigError(f"{key}: {_short(energy)} is not accepted by OpenMM: {' '.join(str(exc).split())}") from None


def _check_box(s: dict) -> None:
    import numpy as np

    from cgflow.systems.toy import BUILTINS, CV, ToySystem

    toy = ToySystem(_toy_energy(s), tuple(CV(n, e) for n, e in _cv_items(s["cv"])),
                    {k: tuple(v) for k, v in s["box"].items()})
    missing = [c for c in toy.coordinates if c not in s["box"]]
    if missing:
        box = _short(s["box"])
        if "potential" in s and s["box"] == {k: list(v) for k, v in BUILTINS[s["potential"]].box.items()}:
            box = f"{box} (the default box of {s['potential']})"
        raise ConfigError(f"system.box: {box} has no range for {', '.join(missing)}, "
                          "which the energy or the cv uses; give a box with a [low, high] range for it")
    point, on_edge = toy.grid_minimum()
    with np.errstate(all="ignore"):
        energy_min = toy.energies(np.array([[point.get(c, 0.0) for c in "xyz"]]))[0]
    if not np.isfinite(energy_min):
        raise ConfigError(f"system.energy: {_short(s['energy'] if 'energy' in s else s['potential'])} "
                          "is not finite anywhere in the box")
    if on_edge:
        where = ", ".join(f"{c}={v:.3g}" for c, v in point.items())
        raise ConfigError(f"system.box: {_short(s['box'])} does not contain the energy minimum "
                          f"(the lowest point is on its edge at {where}); widen the box")
    if "start" in s:
        for c, value in s["start"].items():
            lo, hi = s["box"].get(c, (-np.inf, np.inf))
            if not lo <= value <= hi:
                raise ConfigError(f"system.start.{c}: {value} nm is outside system.box.{c} {[lo, hi]}; "
                                  "start the walkers inside the box")
        with np.errstate(all="ignore"):
            energy = toy.energies(np.array([[s["start"].get(c, 0.0) for c in "xyz"]]))[0]
        if not np.isfinite(energy):
            raise ConfigError(f"system.start: {_short(s['start'])} is where the energy is not finite ({energy}); "
                              "start the walkers where it is")


def _check_molecule(s: dict) -> None:
    for key in ("potential", "energy", "box", "mass", "start"):
        if key in s:
            raise ConfigError(f"system.{key}: {_short(s[key])} is not allowed for {s['type']}; "
                              f"{key} is only for toy systems")
    s.setdefault("solvent", "vacuum")
    s.setdefault("cv", list(MOLECULE_CVS))
    for item in (s["cv"] if isinstance(s["cv"], list) else [s["cv"]]):
        if item not in MOLECULE_CVS:
            raise ConfigError(f"system.cv: {_short(item)} is not allowed for {s['type']}; "
                              "allowed: phi, psi or [phi, psi] (no expressions or renaming)")
    if len(set(_cv_items(s["cv"]))) != len(_cv_items(s["cv"])):
        raise ConfigError(f"system.cv: {_short(s['cv'])} names a CV twice; give each of phi, psi at most once")


def _check_ccg(config: dict) -> None:
    """ccg needs a toy whose CVs are linear in the coordinates its energy uses, with some left over,
    or alanine dipeptide with both phi and psi as CVs."""
    s = config["system"]
    if s["type"] != "toy":
        _check_ccg_molecule(config)
        return
    from cgflow.reconstruction.energy import LinearCVGeometry
    from cgflow.systems.toy import CV, ToySystem

    toy = ToySystem(_toy_energy(s), tuple(CV(n, e) for n, e in _cv_items(s["cv"])),
                    {k: tuple(v) for k, v in s["box"].items()})
    try:
        LinearCVGeometry.from_toy(toy)
    except ValueError as exc:
        raise ConfigError(f"ccg: system.cv {_short(s['cv'])} cannot be used: {exc}") from None
    e = config["ccg"]["estimate"]
    n_cvs = len(_cv_items(s["cv"]))
    e.setdefault("grid_points", config["analysis"]["bins"])
    if isinstance(e["grid_points"], list) and len(e["grid_points"]) != n_cvs:
        raise ConfigError(f"ccg.estimate.grid_points: {e['grid_points']} has {len(e['grid_points'])} entries for "
                          f"{n_cvs} CV(s); give one number or one per CV")


def _check_ccg_molecule(config: dict) -> None:
    s, c = config["system"], config["ccg"]
    cvs = [name for name, _ in _cv_items(s["cv"])]
    if cvs != ["phi", "psi"]:
        raise ConfigError(f"ccg: system.cv {_short(s['cv'])} is not allowed with a ccg section for {s['type']}; "
                          "allowed: [phi, psi], in this order (the flow generates every other internal coordinate "
                          "given both)")
    if c["train"]["nll_weight"] > 0:
        raise ConfigError(f"ccg.train.nll_weight: {c['train']['nll_weight']} is not allowed for {s['type']}; "
                          "it must be 0 (reverse KL only: the forward NLL on molecules is not implemented)")
    c["flow"].setdefault("passes", 2)
    e = c["estimate"]
    e.setdefault("grid_points", config["analysis"]["bins"])
    if isinstance(e["grid_points"], list) and len(e["grid_points"]) != 2:
        raise ConfigError(f"ccg.estimate.grid_points: {e['grid_points']} has {len(e['grid_points'])} entries for "
                          "2 CV(s); give one number or one per CV")


def resolve(raw: dict, base_dir: Path | None = None) -> dict:
    """Validate ``raw`` and return it with every default filled in (raises ConfigError)."""
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__} ({_short(raw)})"
        raise ConfigError(f"the config is {what}; it must be a mapping of keys to values with at least "
                          "campaign and system")
    config = copy.deepcopy(raw)
    sch = schema()
    for key, value in config.items():  # a section whose keys are all commented out: its defaults
        if value is None and sch["properties"].get(key, {}).get("type") == "object":
            config[key] = {}
    _coerce_strings(config, sch, sch)
    _fill_defaults(config, sch)
    _validate_schema(config)
    s = config["system"]
    if s["type"] == "toy":
        _check_toy(s)
    else:
        _check_molecule(s)
    n_cvs = len(_cv_items(s["cv"]))
    bins = config["analysis"]["bins"]
    if isinstance(bins, list) and len(bins) != n_cvs:
        raise ConfigError(f"analysis.bins: {bins} has {len(bins)} entries for {n_cvs} CV(s); give one number or one per CV")
    ref = config["analysis"].setdefault("reference", "exact" if s["type"] == "toy" else "none")
    methods = ", ".join(m for m in REFERENCE_METHODS if m != "exact" or s["type"] == "toy")
    if ref == "exact" and s["type"] != "toy":
        raise ConfigError(f"analysis.reference: 'exact' needs a toy system; for {s['type']} give {methods} "
                          "or the path of a reference fes.csv")
    if ref not in REFERENCE_METHODS:
        path = Path(ref) if base_dir is None or Path(ref).is_absolute() else base_dir / ref
        if not path.is_file():
            raise ConfigError(f"analysis.reference: {ref!r} is not allowed; allowed for {s['type']}: {methods}, "
                              f"or the path of an existing fes.csv file (no file at {str(path.absolute())!r})")
        _check_reference_file(path, [name for name, _ in _cv_items(s["cv"])])
    if ref == "none" and config["analysis"]["peers"]:
        raise ConfigError(f"analysis.peers: {config['analysis']['peers']} needs a reference to score the methods "
                          "against; set analysis.reference (metadynamics_long or a fes.csv) or peers: []")
    if "cg" in config and s["type"] != "alanine_dipeptide":
        raise ConfigError(f"cg: the bead CG stage needs system.type alanine_dipeptide, not {s['type']!r}")
    if "cg" in config and config["cg"]["fg_data"] == "own" and config["cg"]["fg_steps"] < config["cg"]["fg_stride"]:
        raise ConfigError(f"cg.fg_stride: {config['cg']['fg_stride']} is not allowed; it must be <= cg.fg_steps "
                          f"({config['cg']['fg_steps']}), or the FG run records no frame")
    g = config["guidance"]
    g.setdefault("gamma", 8.0 if s["type"] == "toy" else 6.0)
    # fewer bins per CV as CVs are added, so that the cells stay visited: on two CVs 32 x 32 cells
    # left TRAM ~10x slower than 16 x 16 and no more accurate (alanine's phi/psi, Müller-Brown's (x, y))
    g.setdefault("markov_bins", {1: 32, 2: 16}.get(n_cvs, 8))
    if g["e1"] <= g["e0"]:
        raise ConfigError(f"guidance.e1: {g['e1']} is not allowed; it must be > guidance.e0 ({g['e0']})")
    per_cv = {"analysis.bins": bins, "guidance.model_grid": g["model_grid"], "guidance.bias_grid": g["bias_grid"],
              "guidance.markov_bins": g["markov_bins"]}
    for key, points in per_cv.items():  # every grid is held whole in memory (and the bias in OpenMM)
        total = math.prod(points) if isinstance(points, list) else points ** n_cvs
        if total > MAX_GRID_POINTS:
            raise ConfigError(f"{key}: {points} is too fine for {n_cvs} CVs ({total:.3g} points or cells); "
                              f"keep the product over the CVs <= {MAX_GRID_POINTS:.0e}")
    if "initial_bias" in g:
        path = Path(g["initial_bias"]) if base_dir is None else base_dir / g["initial_bias"]
        if not path.is_file():
            raise ConfigError(f"guidance.initial_bias: {g['initial_bias']!r} is not an existing bias.npz file "
                              f"(no file at {str(path.absolute())!r})")
        _check_bias_file(path, [name for name, _ in _cv_items(s["cv"])])
        g["initial_bias"] = str(path.absolute())
    hills, smp = g["hills"], config["sampling"]
    frame_ps = smp["report_interval"] * smp["timestep"]
    lag_frames = max(1, round(g["markov_lag"] / frame_ps))
    lag_steps = lag_frames * smp["report_interval"]
    biased = g["rounds"] > 0 or hills["height"] or "initial_bias" in g
    if biased and g["estimator"] == "tram" and smp["steps"] // smp["report_interval"] <= lag_frames:
        raise ConfigError(f"guidance.markov_lag: {g['markov_lag']} ps ({lag_frames} frames) is not allowed; TRAM needs "
                          f"transitions within each walker's round of {smp['steps'] // smp['report_interval']} frames "
                          "(sampling.steps / report_interval): lower markov_lag, raise sampling.steps or use "
                          "guidance.estimator: mbar")
    if hills["height"] and g["estimator"] == "tram" and hills["interval"] < lag_steps + smp["report_interval"]:
        raise ConfigError(f"guidance.hills.interval: {hills['interval']} steps is not allowed with the TRAM estimator; "
                          f"each deposition interval is a thermodynamic state and needs a transition, so it must be "
                          f">= {lag_steps + smp['report_interval']} steps (TRAM's lag guidance.markov_lag = "
                          f"{lag_steps} steps, plus one saved frame)")
    if ref not in REFERENCE_METHODS:
        config["analysis"]["reference"] = str(path.absolute())
    if "ccg" in config:
        _check_ccg(config)
    if smp["report_interval"] > smp["steps"]:
        raise ConfigError(f"sampling.report_interval: {smp['report_interval']} is not allowed; it must be <= sampling.steps ({smp['steps']})")
    return config


def _check_bias_file(path: Path, cv_names: list[str]) -> None:
    """A bias.npz as cgflow writes it (:class:`cgflow.guidance.bias.BiasGrid`), on these CVs."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            names, shape = [str(n) for n in data["names"]], data["values"].shape
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"guidance.initial_bias: {str(path)!r} is not a cgflow bias.npz (names, values, ...): "
                          f"{' '.join(str(exc).split())}") from None
    if names != list(cv_names) or len(shape) != len(cv_names):
        raise ConfigError(f"guidance.initial_bias: {str(path)!r} is a bias on {names}, not on this system's CVs "
                          f"{list(cv_names)}")


def _check_reference_file(path: Path, cv_names: list[str]) -> None:
    """A fes.csv with a column per CV and F_kJmol (its grid is checked against the bins by the reference job)."""
    import csv

    try:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"analysis.reference: {str(path)!r} cannot be read as a fes.csv: {exc}") from None
    missing = [c for c in [*cv_names, "F_kJmol"] if c not in header]
    if missing:
        raise ConfigError(f"analysis.reference: {str(path)!r} has no column {', '.join(missing)}; a reference fes.csv "
                          f"has one column per CV ({', '.join(cv_names)}) and F_kJmol (columns found: "
                          f"{', '.join(header[:8]) or 'none'})")


def load_config(source: str | Path | dict, base_dir: Path | None = None) -> Campaign:
    """Read (if a path), validate and type a campaign config."""
    raw = read_config_file(Path(source)) if isinstance(source, (str, Path)) else source
    return Campaign(resolve(raw, base_dir))


def read_config_file(path: Path) -> Any:
    """A config file's YAML (``yaml.safe_load``, but a key given twice in one mapping is an error:
    YAML would keep the last, silently dropping, e.g., a whole second ``sampling:`` section)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(Path(path).read_text(), Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read as text: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc) -> str:
    """'line L, column C: what is wrong' from a PyYAML error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if mark is None:
        return problem
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " + (f"{context}, " if context else "") + problem
