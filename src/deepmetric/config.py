"""Experiment configs: one YAML file per experiment, ``--set a.b=c`` overrides, strict validation.

Every key is checked against a schema (unknown keys are errors with a did-you-mean hint), every component
node ``{name, args}`` against the registry, and missing optional keys get their defaults, so the resolved
config saved beside each checkpoint says everything the run used.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from deepmetric.validation import did_you_mean

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "apply_overrides",
    "dump_config",
    "load_config",
    "resolve_config",
    "save_config",
]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and what to do."""


class Component:
    """Schema marker: a ``{name, args}`` node of registry ``kind``; ``default`` None means optional."""

    def __init__(self, kind: str, default: Mapping[str, Any] | None = None, *, required: bool = False) -> None:
        self.kind = kind
        self.default = default
        self.required = required


class Value:
    """Schema marker: a plain value of one of ``types`` (None allowed when ``nullable``)."""

    def __init__(self, default: Any, types: tuple[type, ...], *, nullable: bool = False,
                 choices: tuple[Any, ...] | None = None) -> None:
        self.default = default
        self.types = types
        self.nullable = nullable
        self.choices = choices


class Passthrough:
    """Schema marker: a free-form mapping validated later by its consumer (e.g. ``model.neck``)."""

    def __init__(self, default: Any = None) -> None:
        self.default = default


_INT = (int,)
_NUM = (int, float)

SCHEMA: dict[str, Any] = {
    "name": Value("experiment", (str,)),
    "seed": Value(0, _INT),
    "output_dir": Value(None, (str,), nullable=True),
    "device": Value("auto", (str,)),
    "data": {
        "train": Component("dataset", required=True),
        "eval": Component("dataset"),
        "num_workers": Value(2, _INT),
        "eval_batch_size": Value(256, _INT),
        "max_eval_samples": Value(None, _INT, nullable=True),
    },
    "model": {
        "backbone": Component("backbone", required=True),
        "pooling": Component("pooling"),
        "embedding_dim": Value(128, _INT),
        "neck": Passthrough(),
        "preprocessing": Passthrough(),
    },
    "loss": Component("loss", required=True),
    "miner": Component("miner"),
    "sampler": Component("sampler", {"name": "pk", "args": {"classes_per_batch": 16, "samples_per_class": 4}}),
    "optimizer": Component("optimizer", {"name": "adamw", "args": {"lr": 1e-3, "weight_decay": 1e-4}}),
    "scheduler": Component("scheduler", {"name": "warmup_cosine", "args": {"warmup_steps": 100}}),
    "train": {
        "mode": Value("labels", (str,), choices=("labels", "pairs", "triplets")),
        "steps": Value(1000, _INT),
        "batch_size": Value(64, _INT),
        "negative_ratio": Value(1.0, _NUM),
        "max_minutes": Value(None, _NUM, nullable=True),
        "class_centre_lr": Value(None, _NUM, nullable=True),
        "memory_weight": Value(1.0, _NUM),
        "memory_start_step": Value(0, _INT),
        "grad_clip_norm": Value(None, _NUM, nullable=True),
        "accumulation_steps": Value(1, _INT),
        "mixed_precision": Value(True, (bool,)),
        "channels_last": Value(True, (bool,)),
        "eval_every": Value(500, _INT),
        "checkpoint_every": Value(500, _INT),
        "log_every": Value(10, _INT),
        "tensorboard": Value(True, (bool,)),
        "progress": Value(True, (bool,)),
    },
    "eval": {
        "primary_metric": Value("retrieval/map@r", (str,)),
        "k": Value([1, 5], (list,)),
    },
}


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if isinstance(spec, Mapping):
            out[key] = _defaults(spec)
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


DEFAULTS = _defaults(SCHEMA)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_component(path: str, node: Any, spec: Component) -> dict[str, Any]:
    """A ``{name, args}`` node (or its ``name`` shorthand) checked against registry kind ``spec.kind``: an
    unknown name or argument is a ``ConfigError`` naming ``path``, with a did-you-mean hint."""
    from deepmetric import registry

    if isinstance(node, str):  # shorthand ``loss: triplet`` for a node without args
        node = {"name": node}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{path} must be a component {{name: ..., args: {{...}}}}, "
                          f"got {type(node).__name__}: {node!r}")
    unknown = sorted(set(node) - {"name", "args"})
    if unknown:
        raise ConfigError(f"unknown key {_join(path, unknown[0])!r}; a component has only 'name' and 'args'."
                          f"{did_you_mean(unknown[0], ['name', 'args'])}")
    if "name" not in node:
        raise ConfigError(f"{path} has no 'name'; known {spec.kind} names: {registry.names(spec.kind)}")
    args = node.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{path}.args must be a mapping of argument names to values, got {args!r}")
    try:
        cls = registry.get(node["name"], spec.kind)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}.name: {error}") from None
    accepted = registry.accepted_args(cls)
    for key in args:
        if key not in accepted:
            raise ConfigError(f"unknown argument {_join(path + '.args', key)!r} for {spec.kind} {node['name']!r}."
                              f"{did_you_mean(key, accepted)} Accepted: {accepted}")
    return {"name": node["name"], "args": dict(args)}


def _check_value(path: str, value: Any, spec: Value) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{path} must not be empty (null); expected {spec.types[0].__name__}")
    # bool is an int in Python; a YAML ``true`` where a number is expected is almost surely a typo.
    bad_bool = isinstance(value, bool) and bool not in spec.types
    if bad_bool or not isinstance(value, spec.types):
        expected = " or ".join(t.__name__ for t in spec.types)
        raise ConfigError(f"{path} must be {expected}, got {type(value).__name__}: {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{path} must be one of {list(spec.choices)}, got {value!r}."
                          f"{did_you_mean(value, spec.choices)}")
    return value


def check_section(path: str, section: Any, schema: Mapping[str, Any]) -> dict[str, Any]:
    """``section`` with every key of ``schema`` checked (``Value``, ``Component``, ``Passthrough`` or a nested
    schema) and its defaults filled in; an unknown key is a ``ConfigError`` naming its path."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path or 'the config'} must be a mapping, got {type(section).__name__}: {section!r}")
    for key in section:
        if key not in schema:
            raise ConfigError(f"unknown key {_join(path, str(key))!r}.{did_you_mean(str(key), schema)} "
                              f"Allowed keys{' in ' + path if path else ''}: {sorted(schema)}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        where = _join(path, key)
        present = key in section
        value = section.get(key)
        if isinstance(spec, Mapping):
            out[key] = check_section(where, value, spec)
        elif isinstance(spec, Component):
            if not present or value is None:
                if spec.required:
                    raise ConfigError(f"{where} is required: add a {{name: ..., args: {{...}}}} node "
                                      f"(see configs/ for complete examples)")
                out[key] = None if spec.default is None else check_component(where, spec.default, spec)
            else:
                if isinstance(value, Mapping) and "name" not in value and spec.default is not None:
                    # A node without a name refines the default one, e.g. ``--set optimizer.args.lr=0.01``.
                    value = {"name": spec.default["name"],
                             "args": {**spec.default.get("args", {}), **(value.get("args") or {})}}
                out[key] = check_component(where, value, spec)
        elif isinstance(spec, Passthrough):
            out[key] = copy.deepcopy(value) if present else copy.deepcopy(spec.default)
        else:
            out[key] = _check_value(where, value, spec) if present else copy.deepcopy(spec.default)
    return out


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema and fill every default; raise ``ConfigError`` naming the key."""
    resolved = check_section("", config, SCHEMA)
    for key in ("steps", "batch_size", "accumulation_steps", "eval_every", "checkpoint_every", "log_every"):
        if resolved["train"][key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {resolved['train'][key]}")
    if resolved["data"]["num_workers"] < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {resolved['data']['num_workers']}")
    if resolved["model"]["embedding_dim"] < 1:
        raise ConfigError(f"model.embedding_dim must be >= 1, got {resolved['model']['embedding_dim']}")
    if resolved["output_dir"] is None:
        resolved["output_dir"] = str(Path("runs") / resolved["name"])
    return resolved


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text  # not valid YAML on its own: keep it as a plain string


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; the value is read as YAML (``0.3`` a float, ``[1, 2]`` a list,
    ``null`` None, ``true`` a bool). Intermediate mappings are created; the result is validated later."""
    out = copy.deepcopy(dict(config))
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            raise ConfigError(f"--set expects key.path=value, got {override!r}")
        dotted, _, text = override.partition("=")
        keys = [k.strip() for k in dotted.strip().split(".")]
        if not all(keys):
            raise ConfigError(f"--set {override!r}: the key path {dotted!r} has an empty part")
        node: Any = out
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
                    raise ConfigError(f"--set {override!r}: {where} is not a valid index into a list of {len(node)}")
                key = int(key)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {override!r}: {'.'.join(keys[:depth])} is a {type(node).__name__}, "
                                  f"not a mapping")
            if last:
                node[key] = _parse_value(text)
            else:
                if isinstance(node, dict) and (key not in node or node[key] is None):
                    node[key] = {}
                node = node[key]
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file such as configs/"
                          f"arcface_fashion_mnist.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; it needs at least data.train, model.backbone and loss")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(source: str | os.PathLike | Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML file (or take a mapping), apply ``--set`` overrides and return the resolved config.

    ``source`` is usually a path such as ``"configs/arcface_fashion_mnist.yaml"``; a mapping works the same way.

    Example:
        >>> config = load_config({"data": {"train": {"name": "digits", "args": {"split": "train"}}},
        ...                       "model": {"backbone": {"name": "small_cnn"}},
        ...                       "loss": {"name": "arcface", "args": {"margin": 0.5}}}, ["loss.args.margin=0.3"])
        >>> config["loss"], config["train"]["steps"]
        ({'name': 'arcface', 'args': {'margin': 0.3}}, 1000)
    """
    raw = dict(source) if isinstance(source, Mapping) else _read_yaml(Path(source))
    return resolve_config(apply_overrides(raw, overrides))


def dump_config(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from deepmetric.io import atomic_write_text

    atomic_write_text(path, dump_config(config))
