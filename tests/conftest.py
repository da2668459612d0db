"""The core's tests. Fixtures and helpers come from `tune.testing`, the pytest plugin tune ships
(loaded through its `pytest11` entry point), exactly as plugin authors get them."""

from __future__ import annotations

import os
from pathlib import Path

# Two xdist workers on two cores, some starting 2-process runs: one thread per process avoids
# oversubscription (set before torch is imported; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
