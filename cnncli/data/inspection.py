"""`cnn data inspect`: what a source holds, before training on it.

Per split and class the number of readable pictures; picture sizes (min,
median, max, and the distinct sizes when there are few); Pillow modes; and
every unreadable file with the reason. Image folders and records folders are
decoded in full (on every core, through `cnncli.images`), since only decoding
finds a truncated file; array sources (shapes, mnist, npz, ...) are loaded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cnncli.config.schema import DataConfig
from cnncli.data import catalogue, records

if TYPE_CHECKING:
    from rich.console import Console

DISTINCT_SHOWN = 10  # list every size when there are at most this many


def _sizes(shapes: list[tuple[int, ...]]) -> dict:
    if not shapes:
        return {"min": None, "median": None, "max": None, "distinct": []}
    hw = np.array([s[:2] for s in shapes])
    counts = Counter(tuple(int(d) for d in s[:2]) for s in shapes)
    distinct = [{"height": h, "width": w, "count": n} for (h, w), n in sorted(counts.items())]
    return {
        "min": hw.min(0).tolist(),
        "median": np.median(hw, 0).astype(int).tolist(),
        "max": hw.max(0).tolist(),
        "distinct": distinct if len(distinct) <= DISTINCT_SHOWN else None,
    }


def inspect_source(cfg: DataConfig, progress: Callable[[int, int], None] | None = None, seed: int = 0) -> dict:
    """Counts, sizes, modes and unreadable files of the source `cfg` names, as a JSON-ready dict."""
    found = catalogue.catalogue(cfg, seed)
    names = found.class_names
    total = sum(len(p) for p in found.splits.values())
    step = catalogue.counter(progress, total)
    splits: dict[str, dict] = {}
    shapes: list[tuple[int, ...]] = []
    modes: Counter[str] = Counter()
    unreadable: list[dict] = []
    arrays = found.dataset not in ("image_folder", "records")
    for split in records.SPLITS:
        per_class = np.zeros(len(names), np.int64)
        if arrays:  # pictures made from arrays are readable by construction: no need to encode and decode them
            per_class += np.bincount([p.label for p in found.splits[split]], minlength=len(names))
            shape = _array_shape(cfg)
            shapes += [shape] * len(found.splits[split])
            modes["RGB" if shape[2] == 3 else "L"] += len(found.splits[split])
            if step:
                step(len(found.splits[split]))
        else:
            for picture, result in catalogue.looked(found.splits[split], step):
                if result.error:
                    unreadable.append(
                        {"path": picture.shown, "split": split, "class": names[picture.label], "reason": result.error}
                    )
                    continue
                per_class[picture.label] += 1
                assert result.shape is not None  # a picture read without error has its shape
                shapes.append(result.shape)
                modes[result.mode] += 1
        splits[split] = {"count": int(per_class.sum()), "per_class": dict(zip(names, per_class.tolist(), strict=True))}
    report = {
        "source": found.source,
        "dataset": found.dataset,
        "class_names": names,
        "splits": splits,
        "sizes": _sizes(shapes),
        "modes": dict(sorted(modes.items())),
        "unreadable": unreadable,
        "warnings": found.warnings,
    }
    if found.dataset == "records":
        report["made"] = records.read_index(cfg).get("made", {})
    return report


def _array_shape(cfg: DataConfig) -> tuple[int, int, int]:
    from cnncli.data import SOURCES

    height, width, channels = SOURCES.get(cfg.dataset).describe(cfg).input_shape
    return height, width, channels


def print_report(console: Console, report: dict) -> None:
    """The report as a table of counts and a few lines, for a terminal."""
    from rich.table import Table

    table = Table(title=f"{report['source']} ({report['dataset']})", title_justify="left")
    table.add_column("class", overflow="fold")
    for split in report["splits"]:
        table.add_column(split, justify="right", no_wrap=True)
    for name in report["class_names"]:
        table.add_row(name, *[f"{entry['per_class'][name]:,}" for entry in report["splits"].values()])
    table.add_row("all", *[f"{entry['count']:,}" for entry in report["splits"].values()], end_section=True)
    console.print(table)
    sizes = report["sizes"]
    if sizes["distinct"]:
        shown = ", ".join(f"{s['height']}×{s['width']} ({s['count']:,})" for s in sizes["distinct"])
        console.print(f"sizes (height×width): {shown}", markup=False)
    elif sizes["min"]:
        console.print(
            "sizes (height×width): "
            + ", ".join(f"{key} {sizes[key][0]}×{sizes[key][1]}" for key in ("min", "median", "max")),
            markup=False,
        )
    console.print("modes: " + ", ".join(f"{mode} ({n:,})" for mode, n in report["modes"].items()), markup=False)
    bad = report["unreadable"]
    console.print(f"unreadable: {len(bad):,}" if bad else "unreadable: none", markup=False)
    for entry in bad:
        console.print(f"  {entry['path']}: {entry['reason']}", markup=False)
    for warning in report["warnings"]:
        console.print(f"warning: {warning}", markup=False)
