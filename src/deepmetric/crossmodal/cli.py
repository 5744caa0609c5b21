"""Commands ``deepmetric zeroshot ...``: train a two-tower model, build a zero-shot classifier, classify
images by class descriptions, embed texts, and run the zero-shot benchmark. Light at import."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup


class _DefaultPredict(TyperGroup):
    """``deepmetric zeroshot MODEL --classes classes.txt IMAGES...`` is short for ``deepmetric zeroshot predict
    ...``: a first argument that names no sub-command is a model folder."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["predict", *args]
        return super().parse_args(ctx, args)


def _model_and_classifier(model: Path, classes: Path | None, classifier: Path | None, templates: list[str]):
    from deepmetric.crossmodal.texts import read_classes_file
    from deepmetric.crossmodal.towers import TwoTowerModel
    from deepmetric.crossmodal.zeroshot import ZeroShotClassifier

    if (classes is None) == (classifier is None):
        raise ValueError("pass exactly one of --classes (a text file, one class a line) and --classifier (a folder "
                         "written by 'deepmetric zeroshot build')")
    two_tower = TwoTowerModel.load(model)
    if classifier is not None:
        return two_tower, ZeroShotClassifier.load(classifier, model=two_tower)
    names = read_classes_file(str(classes))
    return two_tower, ZeroShotClassifier.build(two_tower, names, templates=templates or ["{}"])


def register(app: typer.Typer) -> None:
    from deepmetric.train.cli import collect_inputs, user_errors

    zeroshot = typer.Typer(cls=_DefaultPredict, no_args_is_help=True,
                           help="Image and text in one space: two-tower training and zero-shot recognition. "
                                "'deepmetric zeroshot MODEL --classes classes.txt IMAGES...' classifies images.")
    app.add_typer(zeroshot, name="zeroshot")

    @zeroshot.command("train")
    def train_command(
        config: Path = typer.Argument(..., help="two-tower experiment YAML (configs/crossmodal_glyphs.yaml)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run in OUTPUT_DIR first"),
        resume: bool = typer.Option(False, "--resume", help="continue from OUTPUT_DIR/checkpoints/last"),
        overrides: list[str] = typer.Option(
            [], "--set", "-s", help="override a key, e.g. --set crossmodal.loss.name=siglip"),
    ) -> None:
        """Train a two-tower model with the project's trainer; writes OUTPUT_DIR/two_tower (the model) beside the
        trainer's checkpoints and logs."""
        from deepmetric.crossmodal.training import load_crossmodal_config, train_two_tower

        with user_errors():
            run = train_two_tower(load_crossmodal_config(config, overrides), resume=resume, overwrite=overwrite)
        typer.echo(f"finished after {run.result.steps} steps in {run.result.seconds:.0f} s")
        for key, value in sorted(run.result.metrics.items()):
            typer.echo(f"  {key:<28} {value:.4f}")
        typer.echo(f"two-tower model: {run.model_dir}")

    @zeroshot.command("build")
    def build_command(
        model: Path = typer.Argument(..., help="two-tower model folder"),
        classes: Path = typer.Option(..., "--classes", help="text file: one class name or description a line"),
        out: Path = typer.Option(..., "--out", "-o", help="folder for the classifier"),
        templates: list[str] = typer.Option([], "--template", "-t", help="prompt template with one {} (repeatable)"),
    ) -> None:
        """Build and save a zero-shot classifier: class texts, templates, averaged embeddings, model stamp."""
        with user_errors():
            _, classifier = _model_and_classifier(model, classes, None, templates)
            classifier.save(out)
        typer.echo(f"wrote a zero-shot classifier of {len(classifier.names)} classes to {out}")

    @zeroshot.command("predict")
    def predict_command(
        model: Path = typer.Argument(..., help="two-tower model folder"),
        images: list[Path] = typer.Argument(..., help="image files or folders of images"),
        classes: Path = typer.Option(None, "--classes", help="text file: one class name or description a line"),
        classifier: Path = typer.Option(None, "--classifier", help="a saved classifier instead of --classes"),
        templates: list[str] = typer.Option([], "--template", "-t", help="prompt template with one {} (repeatable)"),
        k: int = typer.Option(3, "--k", min=1, help="predictions per image"),
        as_json: bool = typer.Option(False, "--json", help="one JSON object per image"),
    ) -> None:
        """Classify images among classes given as text: the top-k classes with cosine scores."""
        import json

        with user_errors():
            files = collect_inputs(images)
            two_tower, zero_shot = _model_and_classifier(model, classes, classifier, templates)
            predictions = zero_shot.classify(two_tower, [str(f) for f in files], k=k)
        for path, top in zip(files, predictions):
            if as_json:
                typer.echo(json.dumps({"image": str(path), "predictions": [{"class": n, "score": round(s, 6)}
                                                                           for n, s in top]}))
            else:
                typer.echo(f"{path}: " + ", ".join(f"{n} ({s:.3f})" for n, s in top))

    @zeroshot.command("embed")
    def embed_command(
        model: Path = typer.Argument(..., help="two-tower model folder"),
        texts: list[str] = typer.Option(..., "--text", help="a text to embed (repeatable)"),
        output: Path = typer.Option(..., "-o", "--output", help=".npy file for the (N, D) embeddings"),
    ) -> None:
        """Embed texts into the shared space (unit-length float32 rows, in the order given)."""
        import io

        import numpy as np

        from deepmetric.crossmodal.towers import TwoTowerModel
        from deepmetric.io import atomic_write_bytes

        with user_errors():
            if output.suffix != ".npy":
                raise ValueError(f"--output must end in .npy, got {str(output)!r}")
            embeddings = TwoTowerModel.load(model).encode_texts(texts)
            buffer = io.BytesIO()
            np.save(buffer, embeddings, allow_pickle=False)
            atomic_write_bytes(output, buffer.getvalue())
        typer.echo(f"wrote {embeddings.shape[0]} text embeddings of dimension {embeddings.shape[1]} to {output}")

    @zeroshot.command("benchmark")
    def benchmark_command(
        out: Path = typer.Option(Path("docs/benchmarks"), "--out", help="folder for zeroshot.md and the figures"),
        minutes: float = typer.Option(4.0, "--minutes", min=0.1, help="training budget of each trained model"),
        quick: bool = typer.Option(False, "--quick", help="a small run that checks the pipeline end to end"),
    ) -> None:
        """Zero-shot benchmark on unseen glyph classes in unseen typefaces and on a Fashion-MNIST class split,
        with chance, untrained-tower and DeViSE baselines in the same run."""
        from deepmetric.crossmodal.benchmark import run_benchmark

        with user_errors():
            report = run_benchmark(out, minutes=minutes, quick=quick)
        typer.echo(f"wrote {report}")
