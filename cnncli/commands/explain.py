"""`cnn predict`, `cnn saliency`, `cnn activations` and `cnn filters`: a trained model applied and looked into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnncli.commands.common import JsonOption, app, emit_json, err, handled, out, output_option
from cnncli.errors import UsageError


@app.command()
def predict(
    model: Path = typer.Argument(
        ...,
        metavar="RUN_DIR",
        readable=False,
        help="A run directory, an exported .keras/.tflite/.onnx file or a SavedModel directory.",
    ),
    images: list[Path] = typer.Argument(
        ..., metavar="IMAGE...", readable=False, help="Image files (png, jpg, bmp, gif), or folders of them."
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    json_output: bool = JsonOption,
) -> None:
    """Show the most probable classes for each image, with their probabilities.

    Images are converted to the model's colour mode and size as in training.

    A folder stands for every picture in it and below it, in name order.

    Example: cnn predict runs/shapes-cnn/20260101-120000 figure.png --top-k 3
    """
    with handled(json_output):
        from cnncli.deploy.predict import predict_files, predictions_table

        result = predict_files(model, images, top_k)
        for warning in result.warnings:
            err.print(f"[yellow]warning[/]: {warning}")
        if json_output:
            emit_json(result.as_json())
        else:
            out.print(predictions_table(result))


@app.command()
def saliency(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    image: Path = typer.Argument(..., readable=False, help="An image file: png, jpg, bmp, gif."),
    class_: str | None = typer.Option(None, "--class", help="Class name or index (default: the predicted one)."),
    method: str = typer.Option("gradient", "--method", help="gradient | smoothgrad | gradcam"),
    samples: int = typer.Option(25, "--samples", min=1, help="smoothgrad: noisy copies averaged."),
    seed: int = typer.Option(0, "--seed", help="smoothgrad: seed of the noise."),
    layer: str | None = typer.Option(
        None, "--layer", help="gradcam: a layer with a feature map (default: the last convolution)."
    ),
    output: Path | None = output_option("PNG path (default RUN_DIR/saliency/<image>_<class>_<method>.png)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw which pixels move a class's score: |gradient of the logit| beside the image, as a PNG.

    --method gradcam draws Grad-CAM of a convolution layer over the image, beside
    the gradient map; --json then adds the map's peak [row, col] and the share of
    its mass in each quadrant.

    Example: cnn saliency runs/shapes-cnn/20260101-120000 figure.png --method gradcam --output gradcam.png
    """
    with handled(json_output):
        from cnncli.insight.saliency import draw_saliency, explain_image

        if layer and method != "gradcam":
            raise UsageError("is for --method gradcam only", "--layer")
        result = explain_image(run_dir, image, class_, method, samples, seed, layer)
        path = draw_saliency(run_dir, image, result, output)
        cam = result.gradcam.summary() if result.gradcam is not None else None
        if json_output:
            emit_json(
                {
                    "output": Path(path),
                    "image": str(image),
                    "class": result.class_name,
                    "class_index": result.class_index,
                    "probability": result.probability,
                    "predicted": result.predicted,
                    "method": result.method,
                    "score": result.score,
                    **({"gradcam": cam} if cam else {}),
                }
            )
        else:
            at = f" at {cam['layer']} (peak at row {cam['peak'][0]}, column {cam['peak'][1]})" if cam else ""
            out.print(
                f"{result.class_name} (p = {result.probability:.3f}; predicted {result.predicted}), "
                f"{result.method} of the {result.score}{at}: {path}",
                markup=False,
            )


@app.command()
def activations(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    image: Path = typer.Argument(..., readable=False, help="An image file: png, jpg, bmp, gif."),
    layer: list[str] | None = typer.Option(
        None, "--layer", help="A layer with a feature map (repeatable; default: every convolution, in order)."
    ),
    max_channels: int = typer.Option(64, "--max", min=1, help="At most this many channels per layer."),
    output: Path | None = output_option("Directory for the PNGs (default RUN_DIR/activations/<image>/)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw the feature maps one image produces: one PNG grid per layer, a tile per channel.

    Each tile is stretched to its own range and labelled with the channel index
    and its mean activation.

    Example: cnn activations runs/shapes-cnn/20260101-120000 figure.png --layer conv2d --max 16
    """
    with handled(json_output):
        from cnncli.insight.maps import draw_activations

        maps, paths = draw_activations(run_dir, image, layer, max_channels, output)
        rows: list[dict[str, Any]] = [
            {
                "layer": m.layer,
                "output": Path(p),
                "shape": list(m.maps.shape[:2]),
                "channels": m.channels,
                "tiles": m.tiles,
            }
            for m, p in zip(maps, paths, strict=True)
        ]
        if json_output:
            emit_json({"image": str(image), "layers": rows})
        else:
            for row in rows:
                out.print(
                    f"{row['layer']}: {row['tiles']} of {row['channels']} channels, "
                    f"{row['shape'][0]}×{row['shape'][1]}: {row['output']}",
                    markup=False,
                )


@app.command()
def filters(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory written by cnn train."),
    layer: str | None = typer.Option(None, "--layer", help="A Conv2D layer's name (default: the first)."),
    output: Path | None = output_option("PNG path (default RUN_DIR/filters_<layer>.png)."),
    json_output: bool = JsonOption,
) -> None:
    """Draw a convolution layer's learned kernels as a grid (RGB for 3 input channels, else grey per channel).

    Example: cnn filters runs/shapes-cnn/20260101-120000 --layer conv2d --output filters.png
    """
    with handled(json_output):
        from cnncli.insight.saliency import draw_filters

        result, path = draw_filters(run_dir, layer, output)
        if json_output:
            emit_json(
                {
                    "output": Path(path),
                    "layer": result.layer,
                    "kernel_shape": list(result.kernel_shape),
                    "filters_shown": result.shown_filters,
                    "channels_shown": result.shown_channels,
                    "mode": result.mode,
                }
            )
        else:
            kh, kw, cin, cout = result.kernel_shape
            shown = f"{result.shown_filters} of {cout} filters"
            if result.mode == "channels" and cin > 1:
                shown += f" × {result.shown_channels} of {cin} input channels (one row per filter)"
            out.print(f"{result.layer}: {kh}×{kw} kernels, {shown}: {path}", markup=False)
