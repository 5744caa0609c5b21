"""``deepmetric evaluate``: metrics.json and an HTML report with figures, from saved embeddings or from a model
folder plus a data set. Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

PROTOCOLS = ("verification", "identification", "retrieval", "fewshot", "clustering")


def _read_labels(path: Path, count: int):
    """Labels from a .npy array or a CSV with a "label" column (and optionally "path" for thumbnails)."""
    import csv

    import numpy as np

    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if path.suffix != ".csv":
        raise typer.BadParameter(f"--labels must be a .npy or .csv file, got {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "label" not in rows[0]:
        raise typer.BadParameter(f"{path} needs a header with a 'label' column")
    labels = [row["label"] for row in rows]
    try:
        labels = np.array([int(v) for v in labels], dtype=np.int64)
    except ValueError:
        labels = np.unique(labels, return_inverse=True)[1]
    paths = [row["path"] for row in rows] if "path" in rows[0] else None
    if len(labels) != count:
        raise typer.BadParameter(f"{path} has {len(labels)} labels for {count} embeddings")
    return labels, paths


def _parse_data_args(items: list[str]) -> dict:
    import yaml

    args = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--data-arg must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        args[key] = yaml.safe_load(value)
    return args


def _embed_dataset(model_dir: Path, data: str, data_args: dict, split: str, batch_size: int):
    import numpy as np
    import torch

    from deepmetric import registry
    from deepmetric.models import Embedder

    model = Embedder.load(model_dir)
    dataset = registry.build({"name": data, "args": data_args}, "dataset", split=split)
    chunks = []
    for start in range(0, len(dataset), batch_size):
        batch = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(model.encode(batch, batch_size=batch_size))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, model.embedding_dim), np.float32)
    return embeddings, np.asarray(dataset.labels), getattr(dataset, "paths", None), getattr(dataset, "pairs", None)


def _build_index(spec: str, embeddings, metric: str):
    import numpy as np

    from deepmetric.index import build_index

    vector_index = build_index(spec, embeddings.shape[1], metric=metric)
    vector_index.train(embeddings)
    vector_index.add(embeddings, ids=np.arange(len(embeddings)))
    return vector_index


def evaluate(
    source: Path = typer.Argument(..., help="embeddings (.npy, N x D) or a model folder (config.json + model.safetensors)"),
    protocol: str = typer.Option("retrieval", "--protocol", "-p", help="|".join(PROTOCOLS)),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels for .npy embeddings: .npy or CSV with a 'label' (and optional 'path') column"),
    data: Optional[str] = typer.Option(None, "--data", help="data set registry name for a model folder (e.g. digits, fashion_mnist, glyphs)"),
    data_arg: list[str] = typer.Option([], "--data-arg", help="data set argument key=value (repeatable), e.g. root=lfw"),
    split: str = typer.Option("test", "--split", help="data set split (for data sets that have splits)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: metrics.json + report/"),
    metric: str = typer.Option("cosine", "--metric", help="cosine | dot | euclidean"),
    distractors: int = typer.Option(0, "--distractors", help="identification: also report rank-1 with up to this many synthetic distractors"),
    calibrate_far: Optional[float] = typer.Option(None, "--calibrate-far", help="verification on a model folder: store the threshold for this FAR in its config.json"),
    index: Optional[str] = typer.Option(None, "--index", help="retrieval through an ANN index built from this spec (e.g. HNSW32); the loss against exact search is reported"),
    bootstrap: int = typer.Option(100, "--bootstrap", help="verification: bootstrap resamples for confidence intervals"),
    no_map: bool = typer.Option(False, "--no-map", help="skip the t-SNE embedding map"),
    batch_size: int = typer.Option(256, "--batch-size", help="embedding batch size for model folders"),
) -> None:
    """Evaluate embeddings with a protocol and write metrics.json and an HTML report with figures."""
    import numpy as np
    from rich.console import Console

    from deepmetric.eval.evaluators import build_evaluator
    from deepmetric.eval.report import write_report

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    paths = pairs = None
    if source.is_dir():
        if data is None:
            raise typer.BadParameter("a model folder needs --data (a data set name) to embed")
        embeddings, label_array, paths, pairs = _embed_dataset(source, data, _parse_data_args(data_arg), split,
                                                               batch_size)
    elif source.suffix == ".npy" and source.is_file():
        embeddings = np.load(source, allow_pickle=False)
        if labels is None:
            raise typer.BadParameter("embeddings from a .npy file need --labels")
        label_array, paths = _read_labels(labels, len(embeddings))
    else:
        raise typer.BadParameter(f"{source} is neither a .npy file nor a model folder")
    options: dict = {}
    if protocol in ("retrieval", "verification", "identification", "fewshot"):
        options["metric"] = metric
    if protocol == "verification":
        options["num_bootstrap"] = bootstrap
    if index is not None:
        if protocol != "retrieval":
            raise typer.BadParameter("--index applies to --protocol retrieval")
        options["index"] = _build_index(index, embeddings, metric)
    if protocol == "identification" and distractors > 0:
        counts = [c for c in (10, 100, 1_000, 10_000, 100_000, 1_000_000) if c <= distractors]
        options["distractor_counts"] = counts or [distractors]
    evaluator = build_evaluator(protocol, **options)
    if protocol == "verification" and pairs is not None:
        # the data set lists its own pairs and folds (LFW pairs.txt, insightface .bin): use them as given
        from deepmetric.eval.verification import pair_scores

        scores = pair_scores(embeddings[pairs.first], embeddings[pairs.second], metric=metric)
        metrics = evaluator.evaluate_pairs(scores, pairs.same, fold_ids=pairs.fold)
    else:
        metrics = evaluator(embeddings, label_array)
    if calibrate_far is not None:
        if protocol != "verification" or not source.is_dir():
            raise typer.BadParameter("--calibrate-far needs --protocol verification and a model folder")
        from deepmetric.eval.calibration import calibrate_threshold, store_calibration

        calibration = calibrate_threshold(evaluator.details["scores"], evaluator.details["same"],
                                          target_far=calibrate_far, metric=metric)
        store_calibration(source, calibration)
        metrics["verification/calibrated_threshold"] = calibration["threshold"]
    page = write_report(output, protocol=protocol, metrics=metrics, evaluator=evaluator, embeddings=embeddings,
                        labels=label_array, paths=paths, title=f"{protocol} evaluation of {source.name}",
                        embedding_map=not no_map)
    console = Console()
    console.print(f"[bold]{evaluator.primary_metric}[/bold] = {metrics[evaluator.primary_metric]:.4f}")
    console.print(f"metrics: {Path(output) / 'metrics.json'}  report: {page}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
