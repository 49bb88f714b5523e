"""Resident, disk-cached or streamed: which one a file-backed source gets, from the memory budget and the
cache folder's free space, and why (for the run's log and run.json)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BUDGET_SHARE = 0.25  # default memory budget: a quarter of the available RAM leaves room for TF, the model, the OS
DISK_HEADROOM = 1.2  # auto uses the disk cache only when the cache folder has this much more free space than needed


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def human_bytes(n: float) -> str:
    """`n` bytes in B, KB, MB or GB, for messages."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def cache_root(cache_dir: str | None) -> Path:
    """The folder decoded-image caches go in: data.cache_dir, else $XDG_CACHE_HOME or ~/.cache."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnncli" / "images"


def choose_cache(requested: str, budget: int | None, train_bytes: int, total_bytes: int, root: Path) -> tuple[str, str]:
    """(memory | disk | none, why) for a file-backed source."""
    if requested != "auto":
        return requested, "data.cache is set in the config"
    if budget is None:
        budget, where = int(available_memory() * BUDGET_SHARE), f"{BUDGET_SHARE:.0%} of available memory"
    else:
        where = "data.memory_budget"
    size = f"decoded training split {human_bytes(train_bytes)}"
    if train_bytes <= budget:
        return "memory", f"{size} fits the memory budget {human_bytes(budget)} ({where})"
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free >= total_bytes * DISK_HEADROOM:
        return "disk", (
            f"{size} exceeds the memory budget {human_bytes(budget)} ({where}); caching decoded images in {root}"
        )
    return "none", (
        f"{size} exceeds the memory budget {human_bytes(budget)} ({where}) and {root} has only "
        f"{human_bytes(free)} free for a cache; decoding every epoch"
    )
