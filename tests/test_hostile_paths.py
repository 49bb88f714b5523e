"""Paths: links out of an image folder are not followed unless asked, run names cannot climb out of
--output, and nothing a run creates is world-writable, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli import fileio
from cnncli.config.schema import DataConfig
from cnncli.data.image_folder import scan
from cnncli.train import rundir


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """cat/ and dog/ with two images each, plus a secret image outside the folder."""
    root = tmp_path / "images"
    for name in ("cat", "dog"):
        for i in range(2):
            png(root / name / f"{i}.png")
    png(tmp_path / "outside" / "secret.png")
    return root


def files_of(root: Path, **options) -> list[str]:
    found = scan(DataConfig(dataset="image_folder", path=str(root), **options))
    return sorted(str(p.relative_to(root)) for split in found.files.values() for p, _ in split), found.warnings


def test_a_link_to_an_image_outside_the_folder_is_skipped_with_a_warning(images):
    (images / "cat" / "leak.png").symlink_to(images.parent / "outside" / "secret.png")
    files, warnings = files_of(images)
    assert "cat/leak.png" not in files and len(files) == 4
    assert warnings == [f"skipped 1 link(s) leading outside {images}: {images / 'cat' / 'leak.png'}; "
                        "set data.follow_symlinks: true to follow them"]
    files, warnings = files_of(images, follow_symlinks=True)
    assert "cat/leak.png" in files and warnings == []


def test_a_linked_class_folder_outside_is_skipped(images):
    (images / "cow").symlink_to(images.parent / "outside", target_is_directory=True)
    files, warnings = files_of(images)
    assert not any(f.startswith("cow/") for f in files)
    assert warnings[0].startswith(f"skipped 1 link(s) leading outside {images}: {images / 'cow'}")


def test_links_inside_the_folder_are_followed_and_loops_end(images):
    (images / "dog" / "again.png").symlink_to(images / "cat" / "0.png")
    (images / "dog" / "loop").symlink_to(images, target_is_directory=True)  # a cycle back to the root
    files, warnings = files_of(images)
    assert "dog/again.png" in files and warnings == []
    assert len(files) == 5  # the loop added nothing


def test_run_names_stay_one_folder_below_the_output(tmp_path):
    for name in ("../../escape", "/etc/passwd", "..", ".hidden", "a/b\\c", ""):
        run_dir = rundir.create_run_dir(tmp_path / "runs", name)
        assert run_dir.resolve().parent.parent == (tmp_path / "runs").resolve(), (name, run_dir)
        assert not run_dir.parent.name.startswith(".")


def test_nothing_created_is_world_writable_even_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        rundir.no_world_writes()
        run_dir = rundir.create_run_dir(tmp_path / "deep" / "runs", "perm")
        fileio.write(run_dir / "config.yaml", "name: perm\n")
        fileio.write_json(run_dir / "metrics.json", {})
        with rundir.locked(run_dir):
            pass
    finally:
        os.umask(old)
    for path in [tmp_path / "deep", *(tmp_path / "deep").rglob("*")]:
        mode = path.stat().st_mode
        assert not mode & stat.S_IWOTH, f"{path} is world-writable ({stat.filemode(mode)})"
        assert not mode & stat.S_IWGRP, f"{path} is group-writable ({stat.filemode(mode)})"
