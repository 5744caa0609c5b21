"""``evaluate(config)``: the evaluation pipeline that ``deepmetric evaluate`` and the service call, the
counterpart of ``train(config)``. Embeddings (a ``.npy`` file, or a model folder run over a data set) go
through the evaluators named in the config; the result is ``metrics.json`` plus an HTML report with figures.
"""

from __future__ import annotations

import csv
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.config import Component, ConfigError, Passthrough, Value, check_component, check_section
from deepmetric.validation import check_embeddings

_PATH = (str, os.PathLike)

EVALUATION_SCHEMA: dict[str, Any] = {
    "embeddings": Value(None, _PATH, nullable=True),  # a .npy file (N, D) ...
    "labels": Value(None, _PATH, nullable=True),  # ... with labels: .npy, or CSV (label[,path,is_query,is_gallery])
    "model": Value(None, _PATH, nullable=True),  # or a model folder ...
    "data": Component("dataset"),  # ... and the data set it embeds
    "split": Value("test", (str,), nullable=True),  # passed to data sets that take a split
    "batch_size": Value(256, (int,)),
    "device": Value(None, (str,), nullable=True),  # where the model runs; None: CUDA when present, else CPU
    "protocols": Passthrough([{"name": "retrieval"}]),  # evaluator nodes {name, args}, checked below
    "metric": Value("cosine", (str,)),  # given to every evaluator that takes one, unless its args set it
    "index": Value(None, (str,), nullable=True),  # retrieval through an index of this spec, e.g. "HNSW32"
    "calibrate_far": Value(None, (int, float), nullable=True),  # store this FAR's threshold in the model folder
    "output_dir": Value(None, _PATH, nullable=True),
    "embedding_map": Value(True, (bool,)),  # the t-SNE figure
    "title": Value(None, (str,), nullable=True),
}


@dataclass
class EvaluationResult:
    """What ``evaluate`` returns: every metric, each evaluator's primary metric, and where the files are."""

    metrics: dict[str, float]
    primary_metrics: list[str]
    output_dir: Path
    reports: list[Path] = field(default_factory=list)


@dataclass
class EvaluationData:
    """Embeddings (N, D) with labels (N,), and what the data knows besides: image paths (for the retrieval
    grid), ``is_query`` / ``is_gallery`` flags and listed verification pairs."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str] | None = None
    is_query: np.ndarray | None = None
    is_gallery: np.ndarray | None = None
    pairs: Any = None


def resolve_evaluation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked (unknown keys, types, evaluator names and arguments) with every default filled;
    raises ``ConfigError`` naming the key."""
    resolved = check_section("", config, EVALUATION_SCHEMA)
    for key in ("embeddings", "labels", "model", "output_dir"):  # plain strings, so the config saves as YAML
        if resolved[key] is not None:
            resolved[key] = os.fspath(resolved[key])
    if (resolved["embeddings"] is None) == (resolved["model"] is None):
        raise ConfigError("give exactly one of 'embeddings' (a .npy file) and 'model' (a model folder), got "
                          f"embeddings={resolved['embeddings']!r}, model={resolved['model']!r}")
    if resolved["embeddings"] is not None and resolved["labels"] is None:
        raise ConfigError("embeddings from a .npy file need 'labels' (.npy, or CSV with a 'label' column)")
    if resolved["model"] is not None and resolved["data"] is None:
        raise ConfigError("a model folder needs 'data' (a data set node, e.g. {name: digits}) to embed")
    if resolved["output_dir"] is None:
        raise ConfigError("output_dir is required: the folder for metrics.json and the report")
    if resolved["batch_size"] < 1:
        raise ConfigError(f"batch_size must be >= 1, got {resolved['batch_size']}")
    protocols = resolved["protocols"]
    if isinstance(protocols, (str, Mapping)) or not isinstance(protocols, list) or not protocols:
        raise ConfigError(f"protocols must be a non-empty list of evaluator nodes {{name, args}}, got {protocols!r}")
    resolved["protocols"] = [check_component(f"protocols[{i}]", node, Component("evaluator"))
                             for i, node in enumerate(protocols)]
    names = [node["name"] for node in resolved["protocols"]]
    if len(set(names)) < len(names):
        raise ConfigError(f"protocols lists an evaluator twice: {names}; their metrics would overwrite each other")
    if resolved["index"] is not None and "retrieval" not in names:
        raise ConfigError(f"index applies to the retrieval protocol, which is not among protocols {names}")
    if resolved["calibrate_far"] is not None and ("verification" not in names or resolved["model"] is None):
        raise ConfigError("calibrate_far needs the verification protocol and a model folder (where the threshold "
                          "is stored)")
    return resolved


def evaluate(config: Mapping[str, Any]) -> EvaluationResult:
    """Run the evaluation described by ``config`` and write ``output_dir/metrics.json`` and the report.

    ``config`` keys (see ``EVALUATION_SCHEMA``): ``embeddings`` + ``labels``, or ``model`` + ``data``
    (+ ``split``, ``batch_size``, ``device``); ``protocols``: evaluator nodes such as ``{name: retrieval,
    args: {ks: [1, 5]}}``; ``metric``; ``index`` (a spec such as "HNSW32": retrieval through it, with the
    loss against exact search); ``calibrate_far``; ``output_dir``; ``embedding_map``; ``title``.

    Rows flagged by ``is_query`` / ``is_gallery`` (a data-set table's columns, or the labels CSV's) make the
    retrieval queries and gallery. The resolved config is saved as ``output_dir/evaluation.yaml``, so
    evaluating that file's contents repeats the run. With one protocol the report is ``output_dir/report/``;
    with several, each has ``output_dir/<protocol>/report/`` and ``output_dir/metrics.json`` holds all their
    metrics.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.save(f"{folder}/x.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
        ...     np.save(f"{folder}/y.npy", np.arange(40) % 4)
        ...     result = evaluate({"embeddings": f"{folder}/x.npy", "labels": f"{folder}/y.npy",
        ...                        "protocols": [{"name": "retrieval", "args": {"ks": [1]}}],
        ...                        "output_dir": f"{folder}/out", "embedding_map": False})
        ...     written = (result.output_dir / "metrics.json").is_file()
        >>> result.primary_metrics, written
        (['retrieval/map@r'], True)
    """
    from deepmetric import registry
    from deepmetric.config import save_config
    from deepmetric.eval.report import write_report
    from deepmetric.io import write_json

    config = resolve_evaluation_config(config)
    data = load_evaluation_data(config)
    output_dir = Path(config["output_dir"])
    source = Path(config["model"] or config["embeddings"])
    extras: dict[str, Any] = {"metric": config["metric"]}
    if config["index"] is not None:
        extras["index"] = _gallery_index(config["index"], data, config["metric"])
    metrics: dict[str, float] = {}
    runs = []
    for node in config["protocols"]:
        evaluator = registry.build(node, "evaluator", **extras)
        found = _run(evaluator, data)
        metrics.update(found)
        runs.append((node["name"], evaluator, found))
    if config["calibrate_far"] is not None:
        verification = next(evaluator for name, evaluator, _ in runs if name == "verification")
        metrics.update(_calibrate(verification, source, config["calibrate_far"]))
    reports = []
    for position, (name, evaluator, found) in enumerate(runs):
        if name == "verification":  # the calibrated threshold belongs on the verification page
            found = {**found, **{k: v for k, v in metrics.items() if k == "verification/calibrated_threshold"}}
        folder = output_dir if len(runs) == 1 else output_dir / name
        reports.append(write_report(folder, protocol=name, metrics=found, evaluator=evaluator,
                                    embeddings=data.embeddings, labels=data.labels, paths=data.paths,
                                    title=config["title"] or f"{name} evaluation of {source.name}",
                                    embedding_map=config["embedding_map"] and position == 0))
    if len(runs) > 1:
        write_json(output_dir / "metrics.json", {k: (None if isinstance(v, float) and np.isnan(v) else v)
                                                 for k, v in metrics.items()})
    save_config(config, output_dir / "evaluation.yaml")
    return EvaluationResult(metrics=metrics, primary_metrics=[evaluator.primary_metric for _, evaluator, _ in runs],
                            output_dir=output_dir, reports=reports)


def _run(evaluator: Any, data: EvaluationData) -> dict[str, float]:
    if evaluator.name == "verification" and data.pairs is not None:
        # the data set lists its own pairs and folds (LFW pairs.txt, insightface .bin): use them as given
        from deepmetric.eval.verification import pair_scores

        pairs = data.pairs
        scores = pair_scores(data.embeddings[pairs.first], data.embeddings[pairs.second], metric=evaluator.metric)
        return evaluator.evaluate_pairs(scores, pairs.same, fold_ids=pairs.fold)
    flags = {}
    if "is_query" in inspect.signature(evaluator.evaluate).parameters:
        flags = {"is_query": data.is_query, "is_gallery": data.is_gallery}
    return evaluator(data.embeddings, data.labels, **flags)


def _gallery_index(spec: str, data: EvaluationData, metric: str) -> Any:
    """An index of ``spec`` over the gallery rows (the ``is_gallery`` ones), under ids 0..G-1."""
    from deepmetric.eval.evaluators import query_gallery_rows
    from deepmetric.index import build_index

    gallery = data.embeddings
    if data.is_query is not None or data.is_gallery is not None:
        gallery = data.embeddings[query_gallery_rows(data.is_query, data.is_gallery, len(data.embeddings))[1]]
    vector_index = build_index(spec, gallery.shape[1], metric=metric)
    vector_index.train(gallery)
    vector_index.add(gallery, ids=np.arange(len(gallery)))
    return vector_index


def _calibrate(verification: Any, model_dir: Path, target_far: float) -> dict[str, float]:
    from deepmetric.eval.calibration import calibrate_threshold, store_calibration

    calibration = calibrate_threshold(verification.details["scores"], verification.details["same"],
                                      target_far=target_far, metric=verification.metric)
    store_calibration(model_dir, calibration)
    return {"verification/calibrated_threshold": calibration["threshold"]}


def load_evaluation_data(config: Mapping[str, Any]) -> EvaluationData:
    """The embeddings and labels a resolved config names: a .npy file with its labels, or a model folder's
    embeddings of a data set (by ``Embedder.encode``)."""
    if config["model"] is not None:
        return _embed_dataset(config)
    from deepmetric.io import load_array

    embeddings = check_embeddings(f"the embeddings in {config['embeddings']}",
                                  load_array(config["embeddings"], what="embeddings"))
    labels_path = Path(config["labels"])
    if labels_path.suffix == ".npy":
        labels = load_array(labels_path, what="labels")
        if labels.shape != (len(embeddings),):
            raise ValueError(f"{labels_path} holds labels of shape {labels.shape}; expected ({len(embeddings)},), "
                             f"one per embedding")
        return EvaluationData(embeddings, labels)
    if labels_path.suffix != ".csv":
        raise ValueError(f"labels must be a .npy or .csv file, got {labels_path}")
    return read_labels_csv(labels_path, embeddings)


def read_labels_csv(path: Path, embeddings: np.ndarray) -> EvaluationData:
    """Labels from a CSV with a "label" column (integers, or names mapped to ids in sorted order), optionally
    "path" (thumbnails in the report) and "is_query" / "is_gallery" (the retrieval queries and gallery)."""
    from deepmetric.data.table import parse_bool

    if not path.is_file():
        raise FileNotFoundError(f"no such labels file: {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "label" not in rows[0]:
        raise ValueError(f"{path} needs a header with a 'label' column and one row per embedding")
    if len(rows) != len(embeddings):
        raise ValueError(f"{path} has {len(rows)} labels for {len(embeddings)} embeddings")
    names = [row["label"] for row in rows]
    try:
        labels = np.array([int(name) for name in names], dtype=np.int64)
    except ValueError:
        labels = np.unique(names, return_inverse=True)[1].astype(np.int64)
    paths = [row["path"] for row in rows] if "path" in rows[0] else None
    flags = {column: np.array([parse_bool(row[column] or "1", column, f"{path}:{line}")
                               for line, row in enumerate(rows, start=2)], bool) if column in rows[0] else None
             for column in ("is_query", "is_gallery")}
    return EvaluationData(embeddings, labels, paths, flags["is_query"], flags["is_gallery"])


def _embed_dataset(config: Mapping[str, Any]) -> EvaluationData:
    from deepmetric import registry
    from deepmetric.models import Embedder

    model = Embedder.load(config["model"], device=config["device"])
    extra = {} if config["split"] is None else {"split": config["split"]}
    dataset = registry.build(config["data"], "dataset", **extra)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"data set {config['data']['name']!r} has no labels to evaluate against")
    embeddings = model.encode(dataset, batch_size=config["batch_size"], device=config["device"])
    flags = {name: None if getattr(dataset, name, None) is None else np.asarray(getattr(dataset, name), bool)
             for name in ("is_query", "is_gallery")}
    return EvaluationData(embeddings, np.asarray(labels), getattr(dataset, "paths", None), flags["is_query"],
                          flags["is_gallery"], getattr(dataset, "pairs", None))
