"""``deepmetric datasets list|show``: what data sets exist here, and a picture of one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

datasets_app = typer.Typer(no_args_is_help=True, help="Built-in and user data sets: list them, show samples.")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    import yaml

    args: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--arg expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        args[key.strip()] = yaml.safe_load(value)
    return args


def dataset_overview() -> list[dict[str, Any]]:
    """One row per registered data set: name, classes, sizes, availability (cheap: nothing is rendered)."""
    from deepmetric import registry
    from deepmetric.data.builtin import fashion_mnist_available

    rows: list[dict[str, Any]] = []
    for name in registry.names("dataset"):
        row = {"name": name, "classes": "", "items": "", "available": "yes", "notes": ""}
        if name == "fashion_mnist":
            row.update(classes="10", items="60000 train / 10000 test",
                       available="yes" if fashion_mnist_available() else "no",
                       notes="" if fashion_mnist_available() else "sudo apt-get install dataset-fashion-mnist")
        elif name == "digits":
            row.update(classes="10", items="1797 (70% train / 30% test)", notes="bundled with scikit-learn")
        elif name == "glyphs":
            try:
                from deepmetric.data.glyphs import glyph_fonts_summary

                summary = glyph_fonts_summary()
                row.update(classes="up to 5142 characters", items=f"{summary['families']} font families "
                           f"({summary['cjk_families']} with CJK)",
                           available="yes" if summary["families"] >= 2 else "no")
            except (RuntimeError, OSError) as error:
                row.update(available="no", notes=str(error))
        else:
            cls = registry.get(name, "dataset")
            doc = (cls.__doc__ or "").strip().splitlines()
            row.update(available="user data", notes=doc[0] if doc else "")
        rows.append(row)
    return rows


@datasets_app.command("list")
def list_datasets() -> None:
    """List the registered data sets: classes, sizes and whether they are available on this machine."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "classes", "items", "available", "notes")
    for row in dataset_overview():
        table.add_row(row["name"], row["classes"], row["items"], row["available"], row["notes"])
    Console().print(table)


def sample_grid(dataset: Any, *, num_classes: int = 12, per_class: int = 8, scale: int = 2, seed: int = 0) -> Any:
    """A PIL image: one row per class (evenly spread over the classes), ``per_class`` raw samples each."""
    import numpy as np
    from PIL import Image

    from deepmetric.data.transforms import match_channels

    labels = np.asarray(dataset.labels)
    classes = np.unique(labels)
    if len(classes) == 0:
        raise ValueError("the data set is empty")
    rows = classes[np.linspace(0, len(classes) - 1, min(num_classes, len(classes))).round().astype(int)]
    rng = np.random.default_rng(seed)
    size = dataset.preprocessing["image_size"] if dataset.preprocessing else [32, 32]
    height, width = size[0] * scale, size[1] * scale
    pad = 2
    grid = Image.new("RGB", (per_class * (width + pad) + pad, len(rows) * (height + pad) + pad), (255, 255, 255))
    for row, label in enumerate(rows):
        members = np.flatnonzero(labels == label)
        chosen = rng.choice(members, min(per_class, len(members)), replace=False)
        for col, index in enumerate(sorted(chosen)):
            image = (dataset.raw_image(index) if hasattr(dataset, "raw_image") else _unnormalise(dataset, index))
            tile = Image.fromarray(match_channels(np.asarray(image), 3)).resize((width, height), Image.NEAREST)
            grid.paste(tile, (pad + col * (width + pad), pad + row * (height + pad)))
    grid.info["rows"] = [int(label) for label in rows]
    return grid


def _unnormalise(dataset: Any, index: int) -> Any:
    import numpy as np

    tensor = dataset[index][0]
    pre = dataset.preprocessing
    array = tensor.numpy().transpose(1, 2, 0) * np.asarray(pre["std"]) + np.asarray(pre["mean"])
    return np.clip(array * 255, 0, 255).astype(np.uint8)


@datasets_app.command("show")
def show_dataset(
    name: str = typer.Argument(..., help="registered data set name (see `deepmetric datasets list`)"),
    output: Path = typer.Option(Path("grid.png"), "-o", "--output", help="PNG file to write"),
    split: str = typer.Option("train", help="split to show"),
    arg: list[str] = typer.Option([], "--arg", help="data set argument key=value (repeatable), e.g. root=/data"),
    num_classes: int = typer.Option(12, min=1, help="rows (classes) in the grid"),
    per_class: int = typer.Option(8, min=1, help="samples per class"),
) -> None:
    """Write a PNG grid of samples: one row per class."""
    from deepmetric import registry
    from deepmetric.io import atomic_path

    args = {"split": split, **_parse_args(arg)}
    try:
        dataset = registry.build({"name": name, "args": args}, "dataset")
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    grid = sample_grid(dataset, num_classes=num_classes, per_class=per_class)
    with atomic_path(output) as tmp:
        grid.save(tmp, format="PNG")
    typer.echo(f"{name} ({split}): {len(dataset)} items, {dataset.num_classes} classes -> {output}")
    names = getattr(dataset, "class_names", None)
    if names:
        typer.echo("rows: " + "; ".join(names[label] for label in grid.info["rows"]))
