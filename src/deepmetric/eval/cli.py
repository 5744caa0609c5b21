"""``deepmetric evaluate``: metrics.json and an HTML report with figures, from saved embeddings or from a model
folder plus a data set. A thin wrapper: it builds the config of ``deepmetric.eval.pipeline.evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# Help text only; the evaluators themselves are the registry's (kind "evaluator").
PROTOCOL_HELP = "retrieval | verification | identification | fewshot | clustering"
DISTRACTOR_COUNTS = (10, 100, 1_000, 10_000, 100_000, 1_000_000)


def _parse_data_args(items: list[str]) -> dict[str, Any]:
    import yaml

    args = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--data-arg must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        args[key] = yaml.safe_load(value)
    return args


def evaluation_config(*, source: Path, protocol: str, labels: Path | None, data: str | None, data_args: dict,
                      split: str, output: Path, metric: str, distractors: int, calibrate_far: float | None,
                      index: str | None, bootstrap: int, embedding_map: bool, batch_size: int) -> dict[str, Any]:
    """The ``evaluate(config)`` config of the command's options."""
    args: dict[str, Any] = {}
    if protocol == "verification":
        args["num_bootstrap"] = bootstrap
    if protocol == "identification" and distractors > 0:
        args["distractor_counts"] = [c for c in DISTRACTOR_COUNTS if c <= distractors] or [distractors]
    config: dict[str, Any] = {
        "protocols": [{"name": protocol, "args": args}], "metric": metric, "index": index,
        "calibrate_far": calibrate_far, "output_dir": str(output), "embedding_map": embedding_map,
        "title": f"{protocol} evaluation of {source.name}",
    }
    if source.is_dir():
        if data is None:
            raise typer.BadParameter("a model folder needs --data (a data set name) to embed")
        config.update(model=str(source), data={"name": data, "args": data_args}, split=split, batch_size=batch_size)
    elif source.suffix == ".npy" and source.is_file():
        if labels is None:
            raise typer.BadParameter("embeddings from a .npy file need --labels")
        config.update(embeddings=str(source), labels=str(labels))
    else:
        raise typer.BadParameter(f"{source} is neither a .npy file nor a model folder")
    return config


def evaluate_command(
    source: Path = typer.Argument(..., help="embeddings (.npy, N x D) or a model folder (config.json + "
                                            "model.safetensors)"),
    protocol: str = typer.Option("retrieval", "--protocol", "-p", help=PROTOCOL_HELP),
    labels: Path | None = typer.Option(None, "--labels", help="labels for .npy embeddings: .npy, or CSV with a "
                                       "'label' column (optional: 'path', 'is_query', 'is_gallery')"),
    data: str | None = typer.Option(None, "--data", help="data set registry name for a model folder (e.g. digits, "
                                    "fashion_mnist, glyphs)"),
    data_arg: list[str] = typer.Option([], "--data-arg", help="data set argument key=value (repeatable), e.g. "
                                       "root=lfw"),
    split: str = typer.Option("test", "--split", help="data set split (for data sets that have splits)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: metrics.json + report/"),
    metric: str = typer.Option("cosine", "--metric", help="cosine | dot | euclidean"),
    distractors: int = typer.Option(0, "--distractors", help="identification: also report rank-1 with up to this "
                                    "many synthetic distractors"),
    calibrate_far: float | None = typer.Option(None, "--calibrate-far", help="verification on a model folder: "
                                               "store the threshold for this FAR in its config.json"),
    index: str | None = typer.Option(None, "--index", help="retrieval through an ANN index built from this spec "
                                     "(e.g. HNSW32); the loss against exact search is reported"),
    bootstrap: int = typer.Option(100, "--bootstrap", help="verification: bootstrap resamples for confidence "
                                  "intervals"),
    no_map: bool = typer.Option(False, "--no-map", help="skip the t-SNE embedding map"),
    batch_size: int = typer.Option(256, "--batch-size", help="embedding batch size for model folders"),
) -> None:
    """Evaluate embeddings with a protocol and write metrics.json and an HTML report with figures."""
    from rich.console import Console

    from deepmetric.eval.pipeline import evaluate
    from deepmetric.validation import check_non_negative_int, check_positive_int, check_probability

    # Checked whatever the protocol, before anything is read or embedded: an option the chosen protocol does not
    # use still must not hold a wrong value.
    check_non_negative_int("--distractors", distractors)
    check_non_negative_int("--bootstrap", bootstrap)
    check_positive_int("--batch-size", batch_size)
    if calibrate_far is not None:
        check_probability("--calibrate-far", calibrate_far, allow_zero=False, allow_one=False)
    config = evaluation_config(source=source, protocol=protocol, labels=labels, data=data,
                               data_args=_parse_data_args(data_arg), split=split, output=output, metric=metric,
                               distractors=distractors, calibrate_far=calibrate_far, index=index,
                               bootstrap=bootstrap, embedding_map=not no_map, batch_size=batch_size)
    try:
        result = evaluate(config)
    except (ValueError, FileNotFoundError) as error:  # what the user can fix; anything else keeps its traceback
        raise typer.BadParameter(str(error)) from None
    console = Console()
    for primary in result.primary_metrics:
        console.print(f"[bold]{primary}[/bold] = {result.metrics[primary]:.4f}")
    console.print(f"metrics: {result.output_dir / 'metrics.json'}  report: {result.reports[0]}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
