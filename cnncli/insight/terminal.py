"""Rich renderings of results for the terminal; JSON goes through the CLI directly."""

from __future__ import annotations

from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnncli.train.progress import metric_text


def _shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def print_summary(console: Console, result: Any, expand: bool = False) -> None:
    """The layer table; the layers of each block use share one row unless `expand`."""
    s = result.summary
    table = Table(title=f"{s.name}  ·  input {_shape([None, *result.input_shape])}", title_justify="left")
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("Layer", "left"),
        ("Type", "left"),
        ("Output shape", "left"),
        ("Params", "right"),
        ("Receptive field", "right"),
        ("MACs", "right"),
    )
    for col, justify in columns:
        table.add_column(col, justify=justify)
    for row in result.rows(expand):
        rf = "—" if row.receptive_field is None else f"{row.receptive_field[0]}×{row.receptive_field[1]}"
        frozen = " (frozen)" if row.params and row.trainable_params == 0 else ""
        table.add_row(row.name, row.type, _shape(row.output_shape), f"{row.params:,}{frozen}", rf, f"{row.macs:,}")
    console.print(table)
    console.print(
        f"Total params: {s.total_params:,}   trainable: {s.trainable_params:,}   "
        f"frozen: {s.non_trainable_params:,}   size: {s.size_mb:.2f} MB (float32)   "
        f"MACs per image: {s.total_macs:,}"
    )
    if len(result.phases) > 1 or any(p["trainable"] != "all" for p in result.phases):
        print_phases(console, result.phases)


def print_phases(console: Console, phases: list[dict]) -> None:
    """What each training phase trains: `head`, `all` or the listed backbone blocks (plus the head)."""
    table = Table(title="Training phases", title_justify="left")
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("Phase", "right"),
        ("Epochs", "right"),
        ("Trains", "left"),
        ("Trainable params", "right"),
        ("Frozen params", "right"),
        ("Learning rate", "right"),
    )
    for col, justify in columns:
        table.add_column(col, justify=justify)
    for p in phases:
        trains = p["trainable"] if isinstance(p["trainable"], str) else "head + " + ", ".join(p["trainable"])
        rate = "optimizer's" if p["learning_rate"] is None else f"{p['learning_rate']:g}"
        if p.get("layer_lr_decay") is not None:
            rate += f" (× {p['layer_lr_decay']:g} per earlier block)"
        table.add_row(
            str(p["index"] + 1),
            str(p["epochs"]),
            escape(trains),
            f"{p['trainable_params']:,}",
            f"{p['non_trainable_params']:,}",
            rate,
        )
    console.print(table)


CM_TABLE_MAX = 20  # classes; a wider matrix does not fit a terminal (see confusion_matrix.png)


def print_evaluation(console: Console, report: dict, title: str) -> None:
    """A `classification_report` dict: metrics line, per-class table, confusion matrix, mix-ups."""
    names = [escape(str(row["class"])) for row in report["per_class"]]
    parts = [f"loss [bold]{metric_text(report['loss'])}[/]", f"accuracy [bold]{report['accuracy']:.2%}[/]"]
    top = report.get("top_k_accuracy")
    if top:
        parts.append(f"top-{top['k']} accuracy [bold]{top['value']:.2%}[/]")
    parts += [f"macro F1 {report['macro_f1']:.4f}", f"{report['examples']:,} examples"]
    console.print(f"[bold]{escape(title)}[/]  " + "   ".join(parts))
    tta = report.get("tta")
    if tta:
        console.print(
            f"test-time augmentation ({escape(tta['mode'])}): loss [bold]{metric_text(tta['loss'])}[/]   "
            f"accuracy [bold]{tta['accuracy']:.2%}[/] (plain {report['accuracy']:.2%})"
        )

    table = Table(title="Per class", title_justify="left")
    table.add_column("Class", justify="left")
    for col in ("Precision", "Recall", "F1", "Support"):
        table.add_column(col, justify="right")
    for name, row in zip(names, report["per_class"], strict=True):
        table.add_row(
            name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", f"{row['support']:,}"
        )
    console.print(table)

    cm = report["confusion_matrix"]
    if len(cm) <= CM_TABLE_MAX:
        compact = len(cm) > 8  # long names as column headers would squeeze the counts out
        matrix = Table(title="Confusion matrix (rows: true, columns: predicted)", title_justify="left")
        matrix.add_column("true \\ pred", justify="left", no_wrap=True)
        for i, name in enumerate(names):
            matrix.add_column(str(i) if compact else name, justify="right", overflow="ellipsis")
        for t, (name, row) in enumerate(zip(names, cm, strict=True)):
            cells = [
                f"[bold green]{c:,}[/]" if t == p else (f"[red]{c:,}[/]" if c else "[dim]0[/]")
                for p, c in enumerate(row)
            ]
            matrix.add_row(f"{t} {name}" if compact else name, *cells)
        console.print(matrix)
    else:
        console.print(f"[dim]Confusion matrix of {len(cm)} classes not shown; see confusion_matrix.png or --json.[/]")

    if report["most_confused"]:
        console.print("Most confused (true → predicted):")
        for pair in report["most_confused"]:
            console.print(f"  {escape(pair['true'])} → {escape(pair['predicted'])}: {pair['count']:,}")


def print_errors(console: Console, report: dict) -> None:
    """The highest-loss images of `cnn evaluate --errors`, and where their galleries were written."""
    table = Table(title=f"the {len(report['errors'])} highest-loss images")
    for column in ("image", "true", "predicted", "probability", "loss"):
        table.add_column(column, justify="right" if column in ("probability", "loss") else "left")
    for e in report["errors"]:
        table.add_row(
            escape(e.get("path", str(e["index"]))),
            escape(e["true"]),
            escape(e["predicted"]),
            f"{e['probability']:.3f}",
            f"{e['loss']:.3f}",
        )
    console.print(table)
    for key, what in (("errors_png", "gallery"), ("confused_png", "confused pairs")):
        if key in report:
            console.print(f"{what}: {escape(str(report[key]))}")
