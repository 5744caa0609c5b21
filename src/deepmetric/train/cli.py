"""Commands ``deepmetric train``, ``deepmetric embed``, ``deepmetric quickstart`` and ``deepmetric figures
features``. Light at import: the training stack loads inside the commands."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad config, missing files, too large a batch) into one red line and
    exit code 2; anything else is a bug and keeps its traceback."""
    from rich.console import Console

    from deepmetric.train.device import TrainingOutOfMemory

    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, TrainingOutOfMemory, MemoryError) as error:
        from rich.text import Text

        # Text, not markup: messages quote config values such as ['a', 'b'] that look like markup tags.
        Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), str(error)))
        raise typer.Exit(code=2) from None


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Image files, and the images inside folders (recursively, sorted), in the order given."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    if not files:
        raise ValueError("no inputs: pass image files or folders of images")
    return files


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        config: Path = typer.Argument(..., help="experiment YAML (see configs/)"),
        overrides: list[str] = typer.Option([], "--set", "-s", help="override a key: --set loss.args.margin=0.3"),
        resume: bool = typer.Option(False, "--resume", help="continue from OUTPUT_DIR/checkpoints/last"),
        overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run in OUTPUT_DIR first"),
        print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
    ) -> None:
        """Train an embedding model from an experiment config. Writes OUTPUT_DIR/model (the model folder),
        checkpoints/{best,last}, train_log.csv, eval_log.csv, metrics.json and TensorBoard logs.
        Under torchrun every process trains on its share of the classes."""
        from rich.console import Console

        from deepmetric.config import dump_config, load_config

        with user_errors():
            try:
                resolved = load_config(config, overrides)
            except UnicodeDecodeError as error:  # a binary file given as the config
                raise ValueError(f"config file {str(config)!r} is not a YAML text file ({error.reason} at byte "
                                 f"{error.start})") from None
            if print_config:
                typer.echo(dump_config(resolved))
                return
            from deepmetric.train.pipelines import train

            result = train(resolved, resume=resume, overwrite=overwrite)
        if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
            return
        console = Console()
        state = "interrupted (resume with --resume)" if result.interrupted else "finished"
        console.print(f"[bold]{state}[/] after {result.steps} steps in {result.seconds:.0f} s")
        for key, value in sorted(result.metrics.items()):
            console.print(f"  {key:<28} {value:.4f}")
        console.print(f"model folder: {result.model_dir}")

    @app.command("embed")
    def embed_command(
        model: Path = typer.Argument(..., help="model folder (config.json + model.safetensors)"),
        inputs: list[Path] = typer.Argument(..., help="image files or folders of images"),
        output: Path = typer.Option(..., "-o", "--output", help=".npy (embeddings) or .npz (embeddings + paths)"),
        batch_size: int = typer.Option(256, help="images per forward pass"),
        device: str = typer.Option(None, help="cpu, cuda, cuda:1 (default: CUDA when available)"),
    ) -> None:
        """Embed images with a trained model: float32 rows of unit length, one per image, in input order
        (folders expand to their images sorted by path)."""
        import numpy as np

        from deepmetric.io import atomic_path, recover_directory
        from deepmetric.models import Embedder
        from deepmetric.validation import check_positive_int

        with user_errors():  # every option checked before the model loads
            check_positive_int("--batch-size", batch_size)
            if output.suffix not in (".npy", ".npz"):
                raise ValueError(f"--output must end in .npy or .npz, got {str(output)!r}")
            if not (recover_directory(model) / "config.json").is_file():  # a folder mid-replacement is repaired
                raise FileNotFoundError(f"MODEL {str(model)!r} is not a model folder (config.json + "
                                        f"model.safetensors, as 'deepmetric train' writes)")
            files = collect_inputs(inputs)
            embedder = Embedder.load(model, device=device)
            embeddings = embedder.encode([str(f) for f in files], batch_size=batch_size, device=device,
                                         progress=len(files) > batch_size)
            with atomic_path(output) as tmp, open(tmp, "wb") as handle:
                if output.suffix == ".npz":
                    np.savez(handle, embeddings=embeddings, paths=np.array([str(f) for f in files]))
                else:
                    np.save(handle, embeddings)
        typer.echo(f"wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} to {output}")

    @app.command("quickstart")
    def quickstart_command(
        out: Path = typer.Option(Path("runs/quickstart"), "--out", help="where the model, plot and report go"),
        minutes: float = typer.Option(4.5, min=0, help="total time budget for the three models, in minutes"),
        dataset: str = typer.Option("auto", help="glyphs, fashion_mnist or digits (auto: glyphs when fonts exist)"),
        seed: int = typer.Option(0, min=0, help="random seed"),
        min_steps: int = typer.Option(100, min=0,
                                      help="train each model at least this many steps, even past the budget"),
    ) -> None:
        """The main job: train an embedding model on the seen classes of a built-in data set, evaluate
        retrieval and verification on classes it never saw against the untrained network and a tuned
        normalised-softmax baseline trained for the same time, save the model folder, a retrieval grid and
        a 2-D map of the embedding space, and print a report with the share of the time spent training."""
        from deepmetric.train.quickstart import run_quickstart

        with user_errors():
            run_quickstart(out_dir=out, minutes=minutes, dataset=dataset, seed=seed, min_steps=min_steps)

    figures = typer.Typer(no_args_is_help=True, help="Figures that explain what the losses do.")
    app.add_typer(figures, name="figures")

    @figures.command("features")
    def features_command(
        output: Path = typer.Option(Path("docs/figures"), "-o", "--output", help="folder for the PNGs and the GIF"),
        dataset: str = typer.Option("digits", help="digits or fashion_mnist"),
        losses: list[str] = typer.Option(["softmax", "center", "sphereface", "cosface", "arcface"], "--loss",
                                         help="losses to draw (repeat the option)"),
        steps: int = typer.Option(500, min=1, help="training steps per model"),
        frames: int = typer.Option(12, min=1, help="snapshots of the features in the GIF"),
        three_d: bool = typer.Option(True, "--3d/--no-3d", help="also train 3-D embeddings, drawn on the sphere"),
        seed: int = typer.Option(0, min=0, help="random seed"),
    ) -> None:
        """Train the small CNN with a 2-D embedding (and a 3-D one) under softmax, center loss, SphereFace,
        CosFace and ArcFace, and draw the features of test images: a PNG per loss, all side by side, and a
        GIF of the 2-D features moving during training."""
        from deepmetric.train.figures import write_feature_figures

        with user_errors():
            paths = write_feature_figures(output, dataset=dataset, losses=losses, steps=steps, frames=frames,
                                          seed=seed, three_d=three_d)
        for name, path in paths.items():
            typer.echo(f"{name:<16} {path}")
