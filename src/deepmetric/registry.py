"""Name -> class for every configurable component, and strict construction from ``{name, args}`` nodes.

Unknown names and unknown arguments are errors with a did-you-mean hint; nothing is silently dropped.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from deepmetric.validation import did_you_mean

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}
_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {}

# The module (or modules) whose import registers each kind of component. A lookup imports only the modules of
# its kind, so building a loss never pulls in the evaluators (and the compiled exact search behind them).
KIND_MODULES: dict[str, str | tuple[str, ...]] = {
    "distance": "deepmetric.distances", "loss": "deepmetric.losses", "miner": "deepmetric.miners",
    "sampler": "deepmetric.samplers", "backbone": "deepmetric.models.backbones",
    "pooling": "deepmetric.models.pooling",
    "dataset": ("deepmetric.data.builtin", "deepmetric.data.faces", "deepmetric.data.glyphs", "deepmetric.data.table",
                "deepmetric.data.landmarks"),
    "optimizer": "deepmetric.train", "scheduler": "deepmetric.train",
    "evaluator": "deepmetric.eval.evaluators",
    "face_model": "deepmetric.faces.embedder", "face_pipeline": "deepmetric.faces.embedder",
}


def _load(kind: str | None = None) -> None:
    """Import the modules registering ``kind`` (every module when None or not a known kind); Python caches
    imports, so a repeated lookup costs a dictionary access."""
    entries = [KIND_MODULES[kind]] if kind in KIND_MODULES else list(KIND_MODULES.values())
    for module in sorted({name for entry in entries for name in ((entry,) if isinstance(entry, str) else entry)}):
        importlib.import_module(module)


def register(kind: str, name: str, *, example: Mapping[str, Any] | None = None) -> Callable:
    """Class decorator: register ``cls`` as ``name`` of ``kind`` (``"loss"``, ``"miner"``, ...).

    ``example`` is a small valid ``args`` dict used by the contract tests and the docs.
    """

    def decorator(cls: Callable) -> Callable:
        entries = _REGISTRY.setdefault(kind, {})
        if name in entries and entries[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered to {entries[name]!r}")
        entries[name] = cls
        _EXAMPLES[(kind, name)] = dict(example or {})
        cls.registry_name = name
        cls.registry_kind = kind
        return cls

    return decorator


def kinds() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def names(kind: str | None = None) -> list[str]:
    """Registered names of ``kind`` (all kinds when None)."""
    _load(kind)
    if kind is None:
        return sorted({n for entries in _REGISTRY.values() for n in entries})
    return sorted(_REGISTRY.get(kind, {}))


def example(kind: str, name: str) -> dict[str, Any]:
    """The example ``args`` registered with a component."""
    _load(kind)
    get(name, kind)
    return dict(_EXAMPLES[(kind, name)])


def get(name: str, kind: str | None = None) -> Callable[..., Any]:
    """The class registered as ``name`` (of ``kind`` when given)."""
    _load(kind)
    if not isinstance(name, str):
        raise TypeError(f"component name must be a string, got {type(name).__name__}: {name!r}")
    if kind is not None:
        if kind not in _REGISTRY:
            raise ValueError(f"unknown component kind {kind!r}; known kinds: {sorted(_REGISTRY)}."
                             f"{did_you_mean(kind, _REGISTRY)}")
        entries = _REGISTRY[kind]
        if name not in entries:
            raise ValueError(f"unknown {kind} {name!r}; known: {sorted(entries)}.{did_you_mean(name, entries)}")
        return entries[name]
    found = [(k, entries[name]) for k, entries in _REGISTRY.items() if name in entries]
    if not found:
        every = names()
        raise ValueError(f"unknown component {name!r}.{did_you_mean(name, every)} Known: {every}")
    if len(found) > 1:
        raise ValueError(f"component name {name!r} is ambiguous between kinds {[k for k, _ in found]}; pass kind=")
    return found[0][1]


def accepted_args(cls: Callable[..., Any]) -> list[str]:
    params = inspect.signature(cls).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build(node: Mapping[str, Any] | None, kind: str | None = None, **extra: Any) -> Any:
    """Build a component from ``{"name": <registry key>, "args": {...}}``.

    ``extra`` keyword arguments (e.g. ``embedding_dim`` known only at run time) are passed when the
    component accepts them and are not already in ``args``.

    Example:
        >>> from deepmetric import registry
        >>> loss = registry.build({"name": "triplet", "args": {"margin": 0.2}})
    """
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise TypeError(f"a component node must be a mapping with 'name' and 'args', got "
                        f"{type(node).__name__}: {node!r}")
    unknown = set(node) - {"name", "args"}
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(f"unknown key {key!r} in component node {dict(node)!r}; only 'name' and 'args' are "
                         f"allowed.{did_you_mean(key, ['name', 'args'])}")
    if "name" not in node:
        raise ValueError(f"component node {dict(node)!r} has no 'name'")
    cls = get(node["name"], kind)
    args = dict(node.get("args") or {})
    accepted = accepted_args(cls)
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    if not has_var_kw:
        for key in args:
            if key not in accepted:
                raise ValueError(
                    f"{node['name']!r} has no argument {key!r}.{did_you_mean(key, accepted)} Accepted: {accepted}")
    for key, value in extra.items():
        if key not in args and (has_var_kw or key in accepted):
            args[key] = value
    try:
        return cls(**args)
    except TypeError as error:
        raise TypeError(f"cannot build {node['name']!r} with args {args!r}: {error}") from error
