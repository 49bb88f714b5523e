"""One self-contained HTML page per run: `cnn report` and `cnn train --report`.

The page holds the config, the model summary table, learning curves, per-class
metrics, the confusion matrix, the worst mistakes and Grad-CAM on a few test
images. Every picture is a PNG embedded as a data URI and the styles are
inline, so the file opens from disk, mail or a phone with nothing fetched.
(cnncli.insight.terminal is the terminal rendering of the same numbers.)
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Set
from pathlib import Path

import numpy as np

from cnncli.errors import CnnError
from cnncli.train.progress import metric_text

REPORT_ERRORS = 16  # mistakes in the page's gallery, as `cnn evaluate --errors`
GALLERY_COLUMNS = 4  # mistakes per row: a phone's width still shows each image at ~90 px
GRADCAM_IMAGES = 6  # test images with Grad-CAM: the first of each class, up to this many

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1040px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:1.5em;margin:.4em 0 .1em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}.cards{display:flex;flex-wrap:wrap;gap:8px;margin:.8em 0}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:1.3em}img{max-width:100%;height:auto;display:block;margin:.4em 0;
border:1px solid #eee;background:#fff}.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85em;background:#fff}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;white-space:nowrap}.n{text-align:right}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:.8em}
@media (max-width:600px){body{font-size:14px}main{padding:8px}table{font-size:.78em}}
"""


def png_uri(path: Path) -> str:
    """The PNG at `path` as a data: URI, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _img(path: Path | str | None, alt: str) -> str:
    if not path or not Path(path).exists():
        return f"<p class=meta>({html.escape(alt)}: not available)</p>"
    return f'<img src="{png_uri(Path(path))}" alt="{html.escape(alt)}">'


def _table(headers: list[str], rows: list[list], numeric: Set[int] = frozenset()) -> str:
    """A scrollable table; columns whose index is in `numeric` are right-aligned."""

    def cell(tag: str, i: int, value) -> str:
        return f"<{tag}{' class=n' if i in numeric else ''}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _shape(shape) -> str:
    return "×".join("N" if d is None else str(d) for d in shape) if shape else ""


def _summary_table(model) -> tuple[str, dict]:
    from cnncli.model.geometry import summarize

    summary = summarize(model).as_json()
    rows = [
        [
            r["name"],
            r["type"],
            _shape(r["output_shape"]),
            f"{r['params']:,}",
            _shape(r["receptive_field"]) if r["receptive_field"] else "—",
        ]
        for r in summary["layers"]
    ]
    return _table(["layer", "type", "output", "parameters", "receptive field"], rows, {3}), summary


def _gradcam_pictures(model, x, y, names, folder: Path) -> list[Path]:
    """Grad-CAM beside the gradient map for the first test image of each class."""
    from cnncli.deploy.artifacts import float32_model
    from cnncli.insight.maps import conv_layers, grad_cams
    from cnncli.insight.pictures import plot_gradcam
    from cnncli.insight.saliency import logits_model, saliency_map

    if not conv_layers(model):
        return []  # an MLP: no feature map to weight
    scores, _ = logits_model(float32_model(model))
    firsts = [int(np.flatnonzero(y == k)[0]) for k in range(len(names)) if (y == k).any()][:GRADCAM_IMAGES]
    probs = np.asarray(model(x[firsts].astype(np.float32), training=False), np.float32)
    predicted = [int(k) for k in probs.argmax(axis=1)]
    paths = []
    for i, p, k, cam in zip(firsts, probs, predicted, grad_cams(scores, x[firsts], predicted), strict=True):
        gradient = saliency_map(scores, x[i], k)
        title = f"test image {i}: {names[int(y[i])]}, predicted {names[k]} ({p[k]:.2f}) · at {cam.layer}"
        paths.append(plot_gradcam(x[i], gradient, cam.heatmap, folder / f"gradcam_{i}.png", title))
    return paths


def build_report(run_dir: str | Path) -> str:
    """The HTML text of one run's page."""
    from cnncli.deploy.runs import open_run
    from cnncli.insight.evaluation import evaluate_run
    from cnncli.plots import plot_confusion_matrix, plot_curves
    from cnncli.train import rundir

    run = open_run(run_dir)
    model = run.load_model()
    with tempfile.TemporaryDirectory(prefix="cnncli-report-") as tmp:
        folder = Path(tmp)
        report = evaluate_run(run.path, "test", errors=REPORT_ERRORS, figures=folder, columns=GALLERY_COLUMNS)
        names = [row["class"] for row in report["per_class"]]
        cm_png = plot_confusion_matrix(np.array(report["confusion_matrix"]), names, folder / "cm.png")
        history_path = run.path / "history.csv"
        history = rundir.read_history(history_path) if history_path.exists() else []
        curves = plot_curves(history, folder / "curves.png") if history else None
        data = run.load_data()
        cams = _gradcam_pictures(model, data.x_test, data.y_test, names, folder)
        summary_html, summary = _summary_table(model)
        sections = [
            _header(run, report, summary),
            "<h2>Learning curves</h2>" + _img(curves, "learning curves"),
            "<h2>Per-class metrics</h2>"
            + _table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['support']:,}"]
                    for r in report["per_class"]
                ],
                {1, 2, 3, 4},
            ),
            "<h2>Confusion matrix</h2>" + _img(cm_png, "confusion matrix"),
            "<h2>Worst mistakes</h2><p class=meta>The test images with the highest loss, captioned "
            "true → predicted (probability).</p>"
            + _img(report.get("errors_png"), "highest-loss images")
            + _mistakes_table(report),
            ("<h2>Most confused pairs</h2>" + _img(report.get("confused_png"), "most confused pairs"))
            if report.get("confused_png")
            else "",
            "<h2>Grad-CAM</h2><p class=meta>Where the last convolution's evidence for the predicted class lies, "
            "beside the gradient map, on the first test image of each class.</p>"
            + ("".join(_img(p, "Grad-CAM") for p in cams) or "<p class=meta>(the model has no convolution)</p>"),
            "<h2>Model</h2>" + summary_html,
            "<h2>Config</h2><pre>" + html.escape((run.path / "config.yaml").read_text()) + "</pre>",
        ]
    title = html.escape(f"{run.info.get('name', run.path.name)} · {run.path.name}")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{STYLE}</style></head><body><main>"
        + "\n".join(sections)
        + "</main></body></html>\n"
    )


def _header(run, report: dict, summary: dict) -> str:
    cards = [
        ("test accuracy", f"{report['accuracy']:.2%}"),
    ]
    if report.get("tta"):  # the run's evaluate.tta: the mean over each image's test-time views
        cards.append((f"test accuracy, {report['tta']['mode']} TTA", f"{report['tta']['accuracy']:.2%}"))
    cards += [
        ("test loss", metric_text(report["loss"])),
        ("macro F1", f"{report['macro_f1']:.3f}"),
        ("test images", f"{report['examples']:,}"),
        ("parameters", f"{summary['total_params']:,}"),
    ]
    phases = run.info.get("phases") or []
    seconds = sum(p.get("train_seconds") or 0 for p in phases)
    if seconds:
        cards.append(("training time", f"{seconds:.1f} s"))
    data = run.info.get("data") or {}
    source = data.get("source", "") if isinstance(data, dict) else ""
    return (
        f"<h1>{html.escape(str(run.info.get('name', run.path.name)))}</h1>"
        f"<div class=meta>{html.escape(str(run.path))} · started {html.escape(str(run.info.get('started', '')))}"
        f" · {html.escape(str(source))}</div><div class=cards>"
        + "".join(f"<div class=card>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards)
        + "</div>"
    )


def _mistakes_table(report: dict) -> str:
    rows = [
        [e.get("path", e["index"]), e["true"], e["predicted"], f"{e['probability']:.3f}", f"{e['loss']:.3f}"]
        for e in report.get("errors", [])
    ]
    return _table(["image", "true", "predicted", "probability", "loss"], rows, {3, 4}) if rows else ""


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the page to `output` (default RUN_DIR/report.html), atomically; returns its path."""
    from cnncli.fileio import write as atomic_write
    from cnncli.fileio import writing
    from cnncli.train.rundir import find_run_dir

    path = Path(output) if output else find_run_dir(run_dir) / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise CnnError(f"--output `{path}`: the report is an HTML file; give a path ending in .html")
    if path.is_dir():
        raise CnnError(f"--output `{path}` is a directory; give a file path ending in .html")
    text = build_report(run_dir)
    with writing(path, hint="; choose another --output"):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    return path
