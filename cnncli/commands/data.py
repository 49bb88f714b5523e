"""`cnn data pack` and `cnn data inspect`: datasets as TFRecord shards."""

from __future__ import annotations

import typer

from cnncli.commands.common import JsonOption, SetOption, app, emit_json, err, handled, out

data_app = typer.Typer(no_args_is_help=True, help="Pack a dataset into TFRecord shards, or look inside one.")
app.add_typer(data_app, name="data")


@data_app.command("pack")
def data_pack(
    source: str = typer.Argument(
        ..., metavar="SOURCE", help="An image folder, a folder written by cnn data pack, or a config file."
    ),
    output: str = typer.Option(..., "--output", "-o", help="The new folder (local, or gs://... etc.)."),
    shards: int | None = typer.Option(None, "--shards", min=1, help="Shards per split (default: one per ~100 MB)."),
    set_: list[str] | None = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Write a dataset into TFRecord shards of encoded pictures plus index.json, for `dataset: records`.

    Example: cnn data pack photos/ --output photos-records --shards 8
    """
    with handled(json_output):
        from cnncli.data.catalogue import progress_display, resolve
        from cnncli.data.pack import pack

        cfg = resolve(source, set_ or [])
        with progress_display("packing", show=not json_output) as progress:
            result = pack(cfg.data, output, shards, progress, seed=cfg.seed or 0)
        for warning in result.warnings:
            err.print(f"[yellow]warning[/]: {warning}")
        for name, reason in result.skipped:
            err.print(f"[yellow]warning[/]: skipped {name}: {reason}", markup=True, highlight=False)
        if json_output:
            emit_json(result.as_json())
            return
        splits = result.index["splits"]
        counts = " + ".join(f"{e['count']:,} {split}" for split, e in splits.items())
        shard_counts = " + ".join(str(len(e["shards"])) for e in splits.values())
        out.print(
            f"packed {counts} pictures of {len(result.index['class_names'])} classes into {shard_counts} "
            f"shards: {result.output}",
            markup=False,
        )


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(
        ..., metavar="PATH_OR_CONFIG", help="An image folder, a folder written by cnn data pack, or a config file."
    ),
    set_: list[str] | None = SetOption,
    json_output: bool = JsonOption,
) -> None:
    """Count pictures per class and split; show sizes, modes and every unreadable file.

    Example: cnn data inspect photos/ --json
    """
    with handled(json_output):
        from cnncli.data.catalogue import progress_display, resolve
        from cnncli.data.inspection import inspect_source, print_report

        cfg = resolve(source, set_ or [])
        with progress_display("reading", show=not json_output) as progress:
            report = inspect_source(cfg.data, progress, seed=cfg.seed or 0)
        if json_output:
            emit_json(report)
        else:
            print_report(out, report)
