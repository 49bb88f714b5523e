"""Test-run settings; shared constants and checks live in helpers.py."""

import os
import signal

from ci_skips import pytest_runtest_makereport  # noqa: F401  in CI, a skip for a missing module fails

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

# A shell starts a background job (`pytest ... &`, nohup) with SIGINT ignored, and every child inherits
# that, so the tests' `cnn` processes would never see their Ctrl-C. Python's own handler instead: a
# child exec'd from here starts with SIGINT at its default, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
