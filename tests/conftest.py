"""Test-run settings; shared constants and checks live in helpers.py."""

import os

from ci_skips import pytest_runtest_makereport  # noqa: F401  in CI, a skip for a missing module fails

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
