"""The experiment file: load YAML, apply `--set` overrides, validate every key before anything runs.

The `model` and `data` sections are checked against the registered classes' `__init__` signatures (the class
signature is the schema); everything else against the pydantic models below. Every failure is a ConfigError
that names the file and the dotted key.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
import subprocess
import types
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from plexlab import config_files, registry
from plexlab.datamodules import bundled
from plexlab.datamodules.paths import MayNotExist
from plexlab.errors import ConfigError, RegistryError
from plexlab.fit_config import CheckpointConfig, EarlyStoppingConfig, TrackingConfig
from plexlab.sweep_config import DISTRIBUTIONS, Strict, SweepConfig, check_distribution
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ExperimentConfig(Strict):
    """A validated experiment: what to train, on what data, how, and where it is recorded."""

    name: str  # the MLflow experiment, and a folder name for checkpoints and sweep results
    seed: int = 0
    model: dict[str, Any]
    data: dict[str, Any]
    trainer: dict[str, Any] = Field(default_factory=dict)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    sweep: SweepConfig | None = None
    # Not part of the file: where it came from, and the code version it runs.
    source: str = Field("<dict>", exclude=True)
    git_commit: str | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _a_name_not_a_path(cls, name: str) -> str:
        # It names folders (checkpoints, sweep storage that --resume unpickles): never a path.
        if not SAFE_NAME.fullmatch(name) or ".." in name:
            raise ValueError(f"{name!r} is not a plain name: letters, digits, '.', '_' and '-' only, no '..'")
        return name

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def data_name(self) -> str:
        return self.data["name"]

    def model_args(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def data_args(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as it would be written back to YAML."""
        return self.model_dump(mode="json", exclude_none=False)

    def config_hash(self, *, include_sweep: bool = False) -> str:
        """A short hash of the resolved config without tracking settings: equal configs train the same.
        With `include_sweep`, the sweep section counts too (it names a sweep, not a training)."""
        skip = ("tracking",) if include_sweep else ("tracking", "sweep")
        body = {k: v for k, v in self.to_dict().items() if k not in skip}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as it may be recorded: a tracking URI's `user:password@` is left out."""
        from plexlab.tracking import redact

        raw = self.to_dict()
        if raw["tracking"]["uri"]:
            raw["tracking"]["uri"] = redact(raw["tracking"]["uri"])
        return raw

    def flat_params(self) -> dict[str, Any]:
        """The resolved config flattened to dotted keys: the MLflow params of a run."""
        return flatten({k: v for k, v in self.public_dict().items() if k != "sweep"})

    def with_overrides(self, overrides: dict[str, Any]) -> ExperimentConfig:
        """A new validated config with dotted-key overrides applied (a sweep trial's config)."""
        raw = self.to_dict()
        for key, value in overrides.items():
            set_dotted(raw, key, value, self.source)
        return validate(raw, source=self.source, git_commit=self.git_commit)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any, source: str = "<overrides>") -> None:
    """Set `tree["a"]["b"] = value` for key "a.b", creating sections as needed."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(source, key, "malformed key")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(source, key, f"{part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str, source: str = "--set") -> tuple[str, Any]:
    """`model.lr=0.01` -> ("model.lr", 0.01); the value is read as YAML (numbers, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(source, text, "expected KEY=VALUE, e.g. model.lr=0.01")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(source, key, f"value is not valid YAML: {exc.problem}") from None


def load(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: dict[str, Any] | list[str] | None = None,
) -> ExperimentConfig:
    """Read an experiment file (or a dict) over its `base` files, apply overrides, and validate it; an error
    names the file its key came from."""
    origins: config_files.Origins = {}
    if isinstance(config, ExperimentConfig):
        raw, source = config.to_dict(), config.source
    elif isinstance(config, dict):
        source = "<dict>"
        raw, origins = config_files.compose(copy.deepcopy(config), source, Path.cwd())
    else:
        source = str(config)
        raw, origins = config_files.read_composed(Path(config))
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value, source)
        origins = {k: f for k, f in origins.items() if not k.startswith(f"{key}.")} | {key: source}
    try:
        return validate(raw, source=source, git_commit=_git_commit())
    except ConfigError as exc:
        raise config_files.renamed(exc, origins) from None


def validate(
    raw: dict[str, Any], *, source: str = "<dict>", git_commit: str | None = None
) -> ExperimentConfig:
    """Validate a raw config dict; the first problem is raised as a ConfigError naming its key."""
    try:
        cfg = ExperimentConfig.model_validate({**raw, "source": source, "git_commit": git_commit})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(source, key, problem) from None
    cfg.model = validate_section(cfg.model, "model", registry.model_class, source)
    cfg.data = validate_section(cfg.data, "data", registry.datamodule_class, source)
    cfg.trainer = _validate_trainer(cfg.trainer, source)
    if cfg.sweep is not None:
        _validate_space(cfg, source)
    return cfg


def validate_section(section: dict[str, Any], kind: str, lookup: Any, source: str) -> dict[str, Any]:
    """A `model` or `data` section checked against its registered class's signature, paths resolved."""
    name = section.get("name")
    if not isinstance(name, str):
        raise ConfigError(source, f"{kind}.name", "required: the registered name (see `plexlab list`)")
    try:
        cls = lookup(name)
    except RegistryError as exc:
        raise ConfigError(source, f"{kind}.name", str(exc)) from None
    params = registry.init_parameters(cls)
    out = {"name": name}
    for key, value in section.items():
        if key == "name":
            continue
        if key not in params:
            raise ConfigError(source, f"{kind}.{key}", f"unknown key for {name}; valid: {', '.join(params)}")
        annotation = params[key].annotation
        out[key] = _check_value(annotation, value, source, f"{kind}.{key}")
        role = path_role(annotation)
        if role is not None and out[key] not in (None, ""):
            out[key] = _resolve_path(str(out[key]), role, source, f"{kind}.{key}")
    return out


def path_role(annotation: Any) -> Literal["input", "output"] | None:
    """How a class argument declares a path (see plexlab.contract): "input" for `pathlib.Path` (must exist),
    "output" for `OutputPath` (may be created), alone or in a union; None for anything else."""
    members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    roles = set()
    for member in members:
        if typing.get_origin(member) is Annotated:
            base, *extras = typing.get_args(member)
            if base is Path:
                roles.add("output" if any(isinstance(e, MayNotExist) for e in extras) else "input")
        elif member is Path:
            roles.add("input")
    return "output" if "output" in roles else "input" if roles else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _resolve_path(value: str, role: str, source: str, key: str) -> str:
    """Absolute (trials run in other directories), and present unless the class may create it; a
    `bundled:NAME` input is a data set shipped with the package."""
    if role == "input" and value.startswith(bundled.PREFIX):
        try:
            return str(bundled.path(value.removeprefix(bundled.PREFIX)))
        except KeyError as exc:
            raise ConfigError(source, key, exc.args[0]) from None
    path = Path(value).expanduser().resolve()
    if role == "input" and not path.exists():
        raise ConfigError(source, key, f"no such file or directory: {value}")
    return str(path)


@cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))


def _check_value(annotation: Any, value: Any, source: str, key: str) -> Any:
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return value
    try:
        adapter = _adapter(annotation)
    except Exception:  # an annotation pydantic cannot express: accept the value as written
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ConfigError(source, key, f"{exc.errors()[0]['msg']} (got {value!r})") from None


# Keys the runner owns: a config may not set them.
_RUNNER_OWNED = {"logger", "callbacks", "enable_checkpointing", "default_root_dir", "plugins"}


def _validate_trainer(trainer: dict[str, Any], source: str) -> dict[str, Any]:
    from lightning.pytorch import Trainer

    params = registry.init_parameters(Trainer)
    out = {}
    for key, value in trainer.items():
        if key in _RUNNER_OWNED:
            raise ConfigError(source, f"trainer.{key}", "set by plexlab; remove it from the config")
        if key not in params:
            raise ConfigError(source, f"trainer.{key}", "not an argument of lightning.Trainer")
        out[key] = _check_value(params[key].annotation, value, source, f"trainer.{key}")
    return out


def _validate_space(cfg: ExperimentConfig, source: str) -> None:
    assert cfg.sweep is not None
    for key, spec in cfg.sweep.space.items():
        where = f"sweep.space.{key}"
        section, _, arg = key.partition(".")
        if section not in ("model", "data", "trainer", "seed") or (section != "seed" and not arg):
            raise ConfigError(source, where, "must name model.<arg>, data.<arg>, trainer.<arg> or seed")
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(
                source, where, f"expected one of {sorted(DISTRIBUTIONS)}, e.g. {{choice: [1, 2]}}"
            )
        kind, args = next(iter(spec.items()))
        check_distribution(kind, args, source, where)
        # Every value the space can produce must be a valid config value.
        samples = args if kind in ("choice", "grid") else args[:2]
        for sample in samples:
            if kind == "loguniform" or kind == "uniform" or kind == "quniform":
                sample = float(sample)
            raw = cfg.to_dict()
            set_dotted(raw, key, sample, source)
            try:
                validate({k: v for k, v in raw.items() if k != "sweep"}, source=source)
            except ConfigError as exc:
                raise ConfigError(source, where, f"value {sample!r} is invalid: {exc}") from None
    if cfg.sweep.search.name == "grid" and any(
        next(iter(s)) not in ("grid", "choice") for s in cfg.sweep.space.values()
    ):
        raise ConfigError(source, "sweep.search.name", "grid search needs grid or choice for every space key")
    kinds = {next(iter(s)) for s in cfg.sweep.space.values()}
    if cfg.sweep.search.name in ("optuna", "hyperopt") and "grid" in kinds:
        raise ConfigError(
            source, "sweep.search.name", f"{cfg.sweep.search.name} cannot search a grid; use choice"
        )
    for key in cfg.sweep.scheduler.mutations or []:
        if key not in cfg.sweep.space:
            raise ConfigError(source, "sweep.scheduler.mutations", f"{key} is not a key of sweep.space")
    if cfg.sweep.scheduler.name == "pbt":  # an exploited trial inherits the optimizer state: rates in it
        for key in cfg.sweep.scheduler.mutations or cfg.sweep.space:
            arg = key.partition(".")[2]
            if key.startswith("model.") and arg != "lr" and "lr" in arg.split("_"):
                where = "sweep.scheduler.mutations" if cfg.sweep.scheduler.mutations else f"sweep.space.{key}"
                raise ConfigError(
                    source, where, f"PBT cannot mutate {key}: the one rate it mutates is model.lr"
                )


@cache
def _git_commit() -> str | None:
    """The commit of the plexlab checkout that runs (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
