"""`cnn evaluate`'s job: a run's model scored on a split of its data, with its mistakes drawn."""

from __future__ import annotations

from pathlib import Path

from cnncli.deploy.runs import open_run
from cnncli.errors import RunError
from cnncli.model.predict_loop import keras_predict


def evaluate_run(path: str | Path, split: str = "test", overrides: list[str] | None = None,
                 top_k: int | None = None, errors: int | None = None, figures: Path | None = None,
                 columns: int | None = None) -> dict:
    """Metrics of a run's model on a split of its data (or of other, compatible data).

    `errors=N` adds the N highest-loss images (`errors`), examples of the most
    confused pairs, and their galleries as PNGs in `figures` (default: the run directory; cnncli.insight.mistakes).
    """
    from cnncli.data.splits import is_streamed, predict_split
    from cnncli.model.scores import classification_report

    run = open_run(path)
    model = run.load_model()
    data = run.load_data(overrides)
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(x) == 0:
        raise RunError(f"the {split} split of this run's data is empty")
    names = run.class_names or data.class_names
    outputs = int(model.outputs[0].shape[-1])
    if int(y.max()) >= outputs:
        raise RunError(f"the data has labels up to {int(y.max())} but the model outputs {outputs} classes")
    probs, y = predict_split(lambda images: keras_predict(model, images), x, y)
    names = names[:outputs] if len(names) >= outputs else [str(i) for i in range(outputs)]
    report = classification_report(y, probs, names, top_k=top_k)
    report["split"] = split
    report["run_dir"] = str(run.path)
    if errors is not None:
        from cnncli.insight import mistakes

        paths = (data.paths or {}).get(split)
        report["errors"] = mistakes.worst(y, probs, names, errors, paths)
        report["most_confused"] = mistakes.pair_examples(y, probs, names, report["most_confused"], paths)
        suffix = "" if split == "test" and not overrides else f"_{split}"
        pictures = _Pictures(x) if is_streamed(x) else x  # a streamed split reads only the images shown
        report.update(mistakes.draw(pictures, report["errors"], report["most_confused"], figures or run.path, suffix,
                                     columns))
    return report


class _Pictures:
    """Images of a streamed split by index, each read from its file when asked for."""

    def __init__(self, split):
        self.split = split

    def __getitem__(self, index: int):
        return self.split.read_one(int(index))[0]
