"""The documentation tells the truth: its `cnn` examples run, its reference is current, the site builds.

Every fenced block in README.md and docs/ that holds a `cnn` command either is
run here, or follows a `<!-- not run: REASON -->` line saying why not.

A run block is a `console` block: lines starting with `$ cnn` are commands,
the lines after each are its output. Each page's blocks run in order, in one
fresh folder per page that holds a link to configs/, so a page may write a file
(`cnn init`) and use it below. A block after `<!-- file: NAME -->` is written to
NAME in that folder first (the bad config an error example reads).

Shown output is compared line by line with runs of spaces squeezed and blank
lines dropped: a line `...` stands for any number of lines, and a line ending
in `...` for any line starting with what comes before it. Output showing
`Error:` (or a `::error` annotation) must come with exit code 1, any other with 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app, fill_optional_values

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<reason>\S.*?)\s*-->\s*$")
FILE = re.compile(r"^\s*<!-- file: (?P<name>[\w./-]+)\s*-->\s*$")


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of a Markdown page: language, lines (indent removed), line number, the marker above."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = len(opening["indent"])
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        found.append(
            {
                "lang": opening["lang"],
                "line": i + 1,
                "before": before,
                "lines": [line[indent:] for line in lines[i + 1 : end]],
            }
        )
        i = end + 1
    return found


def command_of(line: str) -> str | None:
    """The `cnn ...` command a block's line shows, if it shows one."""
    text = line.strip().removeprefix("$ ").strip()
    return text if re.match(r"cnn( |$)", text) else None


def cnn_blocks(path: Path) -> list[dict]:
    return [b for b in blocks(path) if any(command_of(line) for line in b["lines"])]


def squeeze(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def matches(shown: list[str], actual: list[str]) -> bool:
    """`shown` against `actual`, whole, with the `...` wildcards of the module docstring."""
    if not shown:
        return not actual
    head, rest = shown[0], shown[1:]
    if head == "...":
        return any(matches(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    if head.endswith("...") and actual[0].startswith(head[:-3].rstrip()):
        return matches(rest, actual[1:])
    return actual[0] == head and matches(rest, actual[1:])


def runs(block: dict) -> list[tuple[str, list[str]]]:
    """A console block's commands, each with the output shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in block["lines"]:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_cnn_example_is_run_or_says_why_not(path):
    for block in cnn_blocks(path):
        where = f"{path.relative_to(ROOT)}:{block['line']}"
        if NOT_RUN.match(block["before"]):
            continue
        assert block["lang"] == "console", (
            f"{where}: a `cnn` example outside a console block needs <!-- not run: why -->"
        )
        for command, _ in runs(block):
            assert command_of(command), (
                f"{where}: `{command}` is not a cnn command; mark the block <!-- not run: why -->"
            )


@pytest.mark.parametrize(
    "path",
    [p for p in PAGES if any(not NOT_RUN.match(b["before"]) for b in cnn_blocks(p))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_run_examples_show_their_real_output(path, tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for block in blocks(path):
        marker = FILE.match(block["before"])
        if marker:
            (tmp_path / marker["name"]).write_text("\n".join(block["lines"]) + "\n")
            continue
        if block not in cnn_blocks(path) or NOT_RUN.match(block["before"]):
            continue
        for command, shown in runs(block):
            argv = fill_optional_values(shlex.split(command, comments=True)[1:])
            result = runner.invoke(app, argv)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                f"{path.name}:{block['line']}: `{command}` raised {result.exception!r}"
            )
            expected_code = 1 if any(line.startswith(("Error:", "::error")) for line in shown) else 0
            where = f"{path.relative_to(ROOT)}:{block['line']}: `{command}`"
            assert result.exit_code == expected_code, f"{where} exited {result.exit_code}:\n{result.output}"
            assert matches(squeeze("\n".join(shown)), squeeze(result.output)), (
                f"{where} printed something else than the page shows:\n{result.output}"
            )


def test_the_wildcards_accept_only_what_they_should():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a b ..."], ["a b c"])
    assert not matches(["a", "d"], ["a", "b", "d"])  # no wildcard: every line shown
    assert not matches(["a", "...", "e"], ["a", "b", "d"])
    assert not matches(["x y ..."], ["a b c"])


def test_a_cnn_example_without_marker_or_console_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```sh\ncnn train x.yaml\n```\n\n<!-- not run: trains -->\n```sh\ncnn train y.yaml\n```\n")
    found = cnn_blocks(page)
    assert [bool(NOT_RUN.match(b["before"])) for b in found] == [False, True]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", DOCS / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    """docs/reference/cli.md is what the generator makes from the app now."""
    generator = load_generator()
    assert generator.PAGE.read_text(encoding="utf-8") == generator.render(), (
        "docs/reference/cli.md is stale: run python docs/gen_cli_reference.py"
    )


def test_cli_reference_names_every_command():
    import typer

    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="cnn")
    for name in group.list_commands(ctx):
        assert f"## `cnn {name}`" in text
    assert "## `cnn data pack`" in text and "## `cnn data inspect`" in text


def test_readme_install_and_test_commands_are_what_ci_runs():
    """.ci/run installs and tests "exactly as the README says"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"' in readme
    assert 'pip install -e ".[dev]"' in ci
    assert "cnn train configs/shapes_cnn.yaml" in readme
    assert re.search(r"^python -m pytest$", readme, re.M)
    assert re.search(r'^\s*"\$venv/bin/python" -m pytest "\$@"', ci, re.M)


def test_readme_stays_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link


def test_the_configs_table_lists_every_shipped_config():
    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w/]+\.yaml)` \|", text, re.M))
    shipped = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert listed == shipped


def test_the_site_builds_strict(tmp_path):
    """mkdocs build --strict: every page in the nav, every link and image resolving (the `docs` extra)."""
    pytest.importorskip(
        "material", reason="mkdocs-material is not installed (the docs extra: pip install -e '.[docs]')"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_every_file_the_docs_name_exists():
    """A path such as `cnncli/train/loop.py` or `tests/train/test_distributed.py` in a page is a real file."""
    for page in PAGES:
        for path in re.findall(r"\b((?:cnncli|tests|benchmarks|docs)/[\w/.-]+\.(?:py|json|md|png))", page.read_text()):
            assert (ROOT / path).is_file() or (page.parent / path).is_file(), f"{page.relative_to(ROOT)} names {path}"


# The architecture page's "Where things happen": each file with the names it says are defined there.
WHERE_THINGS_HAPPEN = {
    "cnncli/config/vocabulary.py": [
        "make_layer",
        "check_layer_spec",
        "check_args",
    ],
    "cnncli/config/learning.py": ["make_optimizer", "make_loss", "make_metric", "SCHEDULES"],
    "cnncli/model/builder.py": ["build_model"],
    "cnncli/train/schedules.py": ["EpochSchedule"],
    "cnncli/train/loop.py": [
        "Trainer",
        "_resident_chunk",
        "epoch_permutation",
        "_stream_chunk",
        "_distributed_chunk",
        "_distributed_iterator",
    ],
    "cnncli/fileio.py": ["write", "write_json", "writing", "replacing", "temp_path", "locked"],
    "cnncli/train/rundir.py": ["create_run_dir", "write_history", "write_checkpoint", "save_model", "reconcile"],
    "cnncli/errors.py": ["CnnError", "ConfigError", "DataError", "RunError", "Problem", "render", "did_you_mean"],
    "cnncli/commands/common.py": ["handled"],
    "cnncli/compat.py": ["check", "report"],
}


@pytest.mark.parametrize("path", sorted(WHERE_THINGS_HAPPEN))
def test_the_architecture_page_names_functions_that_exist(path):
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    source = (ROOT / path).read_text(encoding="utf-8")
    assert f"`{path}`" in page
    for name in WHERE_THINGS_HAPPEN[path]:
        assert re.search(rf"`(?:\w+\.)?{name}(?:\.\w+)?(?:\(\))?`", page), f"architecture.md does not name {name}"
        assert re.search(rf"^\s*(?:def|class) {name}\b|^{name}\s*[:=]", source, re.M), f"{path} defines no {name}"
