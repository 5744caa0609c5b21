"""``deepmetric landmarks ...``: build a landmark index from GLDv2 files, recognise queries into a submission
CSV, score submissions against solution files (GAP, mAP@100) or a model on revisited Oxford/Paris, and run the
offline benchmark."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

landmarks_app = typer.Typer(no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)

SCALES_HELP = "comma-separated resize factors averaged at test time, e.g. 0.707,1,1.414 (default: 1)"


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.707,1,1.414"`` or ``"sqrt"`` (1/sqrt2, 1, sqrt2) -> a tuple of positive floats."""
    if text.strip() == "sqrt":
        return (1 / math.sqrt(2), 1.0, math.sqrt(2))
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--scales must be numbers separated by commas (or 'sqrt'), got {text!r}") from None
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"--scales must be positive numbers separated by commas, got {text!r}")
    return scales


def folder_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted."""
    from deepmetric.data.table import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def query_images(queries: Path) -> tuple[list[str], list[str]]:
    """Query ids and paths: a GLDv2 folder with ``test.csv`` over ``test/a/b/c/`` or any folder of images (ids:
    file names without extension)."""
    from deepmetric.data.landmarks import gldv2_table

    if (queries / "test.csv").is_file():
        table = gldv2_table(queries, "test")
        return [Path(p).stem for p in table.paths], list(table.paths)
    files = folder_images(queries)
    return [p.stem for p in files], [str(p) for p in files]


@landmarks_app.command("index")
def index_command(
    model: Path = typer.Argument(..., help="model folder (config.json + model.safetensors)"),
    images: Path = typer.Argument(..., help="GLDv2 folder: train_clean.csv (or train.csv) over train/a/b/c/"),
    output: Path = typer.Option(..., "-o", "--output", help="landmark index folder to write"),
    part: str = typer.Option("train_clean", help="which GLDv2 file lists the index images: train_clean or train"),
    distractors: Path = typer.Option(None, help="folder of known non-landmark images, for suppression"),
    scales: str = typer.Option("1", help=SCALES_HELP),
    whiten: bool = typer.Option(False, help="learn PCA whitening on the index embeddings"),
    whitening_dim: int = typer.Option(None, help="keep this many whitened dimensions (default: all)"),
    batch_size: int = typer.Option(64, min=1),
) -> None:
    """Embed GLDv2 index images (and distractors) and store them as a landmark index."""
    from deepmetric.data.landmarks import gldv2_table
    from deepmetric.landmarks.pipeline import build_landmark_index
    from deepmetric.models.embedder import Embedder

    table = gldv2_table(images, part)
    embedder = Embedder.load(model)
    distractor_paths = [str(p) for p in folder_images(distractors)] if distractors is not None else None
    index = build_landmark_index(embedder, list(table.paths), table.labels, [Path(p).stem for p in table.paths],
                                 distractor_images=distractor_paths, scales=parse_scales(scales), whiten=whiten,
                                 whitening_dim=whitening_dim, model=str(model.resolve()), batch_size=batch_size,
                                 progress=True)
    index.save(output)
    _print({"index": str(output), "images": len(index.labels), "landmarks": int(len(set(index.labels.tolist()))),
            "distractors": 0 if index.distractors is None else len(index.distractors),
            "scales": list(index.scales), "whitening": whiten})


@landmarks_app.command("recognize")
def recognize_command(
    index: Path = typer.Argument(..., help="landmark index folder (from `deepmetric landmarks index`)"),
    queries: Path = typer.Argument(..., help="GLDv2 folder with test.csv over test/a/b/c/, or a folder of images"),
    output: Path = typer.Option(..., "-o", "--output", help="submission CSV to write (id,landmarks)"),
    model: Path = typer.Option(None, help="model folder (default: the one the index was built with)"),
    k: int = typer.Option(5, min=1, help="neighbours that vote"),
    voting: bool = typer.Option(True, help="similarity-weighted kNN voting (off: the nearest image's label)"),
    suppression: bool = typer.Option(True, help="lower the confidence of queries that look like distractors"),
    suppression_weight: float = typer.Option(1.0, min=0.0),
    batch_size: int = typer.Option(64, min=1),
) -> None:
    """Recognise query images into a GLDv2 recognition submission (``id,landmarks`` = ``"<id> <confidence>"``)."""
    from deepmetric.data.landmarks import write_recognition_submission
    from deepmetric.landmarks.pipeline import LandmarkIndex, recognize
    from deepmetric.models.embedder import Embedder

    stored = LandmarkIndex.load(index)
    model_dir = model or (Path(stored.model) if stored.model else None)
    if model_dir is None:
        raise ValueError(f"{index} does not record its model; pass --model")
    ids, paths = query_images(queries)
    vectors = stored.embed(Embedder.load(model_dir), paths, batch_size=batch_size, progress=True)
    has_distractors = stored.distractors is not None and len(stored.distractors) > 0
    if suppression and not has_distractors:
        typer.echo("note: the index has no distractors; non-landmark suppression is off", err=True)
    result = recognize(stored, vectors, k=k, voting=voting, suppression=suppression and has_distractors,
                       suppression_weight=suppression_weight)
    write_recognition_submission(output, result.predictions(ids))
    _print({"submission": str(output), "queries": len(ids)})


@landmarks_app.command("evaluate")
def evaluate_command(
    recognition_solution: Path = typer.Option(None, help="recognition solution CSV (id,landmarks,Usage)"),
    submission: Path = typer.Option(None, help="recognition submission CSV (id,landmarks)"),
    retrieval_solution: Path = typer.Option(None, help="retrieval solution CSV (id,images,Usage)"),
    retrieval_submission: Path = typer.Option(None, help="retrieval submission CSV (id,images)"),
    usage: list[str] = typer.Option(["Public", "Private"], help="which Usage rows are scored (repeat the option)"),
) -> None:
    """Score submissions as the Google Landmarks challenges do: GAP (recognition), mAP@100 (retrieval)."""
    from deepmetric.landmarks.pipeline import evaluate_solutions

    _print(evaluate_solutions(recognition_solution=recognition_solution, recognition_submission=submission,
                              retrieval_solution=retrieval_solution, retrieval_submission=retrieval_submission,
                              usages=usage))


@landmarks_app.command("revisited")
def revisited_command(
    model: Path = typer.Argument(..., help="model folder"),
    ground_truth: Path = typer.Argument(..., help="gnd_roxford5k.pkl or gnd_rparis6k.pkl"),
    images: Path = typer.Option(None, help="folder of <name>.jpg (default: jpg/ beside the pickle)"),
    scales: str = typer.Option("1", help=SCALES_HELP),
    query_expansion: bool = typer.Option(False, "--qe", help="alpha-query expansion"),
    dba: bool = typer.Option(False, "--dba", help="alpha-database-side augmentation"),
    batch_size: int = typer.Option(32, min=1),
) -> None:
    """Revisited Oxford / Paris mAP and mP@k, Easy / Medium / Hard (queries cropped to their boxes)."""
    from deepmetric.landmarks.pipeline import evaluate_revisited
    from deepmetric.models.embedder import Embedder

    _print(evaluate_revisited(Embedder.load(model), ground_truth, images=None if images is None else str(images),
                              scales=parse_scales(scales), query_expansion=query_expansion, dba=dba,
                              batch_size=batch_size, progress=True))


@landmarks_app.command("benchmark")
def benchmark_command(
    out: Path = typer.Option(Path("runs/landmarks"), help="folder for the model, table, figures and JSON"),
    minutes: float = typer.Option(4.0, min=0.1, help="training budget in minutes (the shipped config's schedule)"),
    model: Path = typer.Option(None, help="skip training: use this model folder"),
    non_landmark_share: float = typer.Option(0.6, min=0.05, max=0.95,
                                             help="share of the queries that show no landmark"),
    zipf_exponent: float = typer.Option(0.3, min=0.0, help="long tail of the index images per landmark"),
    seed: int = typer.Option(0, min=0),
) -> None:
    """The offline stand-in benchmark (Glyphs laid out like GLDv2): train with configs/landmarks_glyphs.yaml, then
    GAP and mAP@100 for each stage added in turn, with latencies, a bar chart and query grids."""
    from deepmetric.landmarks.benchmark import run_benchmark

    report = run_benchmark(out_dir=out, minutes=minutes, model_dir=model, non_landmark_share=non_landmark_share,
                           zipf_exponent=zipf_exponent, seed=seed)
    typer.echo(report.markdown)


def register(app: typer.Typer) -> None:
    app.add_typer(landmarks_app, name="landmarks")
