"""``deepmetric export``: a model folder to an ONNX graph, written only when parity with PyTorch holds on real
inputs. A thin wrapper over ``deepmetric.deploy.export.export_onnx``; the parity report prints as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def export_command(
    model: Annotated[Path, typer.Argument(help="model folder (config.json + model.safetensors)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the .onnx file to write (or a folder: "
                                                               "FOLDER/model.onnx)")],
    format: Annotated[str, typer.Option("--format", help="export format: onnx")] = "onnx",
    parity_images: Annotated[int, typer.Option(help="Glyphs test images (whole classes) for the downstream "
                                                    "parity check (top-10 overlap, MAP@R)")] = 1000,
    faces: Annotated[bool | None, typer.Option("--faces/--no-faces", help="add aligned face crops to the "
                                                                         "per-sample check (default: when the "
                                                                         "face extra is installed, for colour "
                                                                         "models)")] = None,
    quantize: Annotated[str | None, typer.Option(help="also quantise: 'int8' (dynamic, onnxruntime.quantization) "
                                                      "writes the int8 graph instead, with its parity and MAP@R loss "
                                                      "reported; never on by default")] = None,
    max_map_loss: Annotated[float, typer.Option(help="with --quantize: the largest MAP@R loss accepted")] = 0.01,
    threads: Annotated[int | None, typer.Option(help="onnxruntime threads for the check (default: PyTorch's)")]
    = None,
) -> None:
    """Export a model folder to ONNX (dynamic batch, pinned opset, L2 normalisation in the graph, preprocessing and
    model stamp in the metadata). Parity is checked before writing, at batch sizes 1, 7 and 32: every sample's cosine
    to PyTorch >= 0.99999, top-10 neighbour overlap >= 0.999 and MAP@R within 1e-4 on the Glyphs test split. When it
    fails the command exits with code 2 and writes nothing."""
    from deepmetric.deploy.export import FORMATS, export_onnx
    from deepmetric.validation import check_choice, check_non_negative_float, check_positive_int

    check_choice("--format", format, FORMATS)
    check_positive_int("--parity-images", parity_images)
    check_non_negative_float("--max-map-loss", max_map_loss)
    check_positive_int("--threads", threads, allow_none=True)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"MODEL must be a model folder (config.json + model.safetensors), got {model}")
    if quantize is not None:
        from deepmetric.deploy.quantize import QUANTIZATIONS, export_quantized

        check_choice("--quantize", quantize, QUANTIZATIONS)
        result = export_quantized(model, output, max_images=parity_images, faces=faces, threads=threads,
                                  max_map_loss=max_map_loss, progress=True)
    else:
        result = export_onnx(model, output, max_images=parity_images, faces=faces, threads=threads, progress=True)
    typer.echo(json.dumps(result.to_dict(), indent=2))


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
