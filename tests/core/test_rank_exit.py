"""How a rank of a multi-process run ends: exit handlers run, interpreter finalization does not
(a library thread taking the GIL during finalization aborts the process on Python < 3.14)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import atexit, sys
import torch.distributed

log = sys.argv[1]
atexit.register(lambda: open(log, "a").write("exit handler\\n"))


class Finalized:
    def __del__(self):
        open(log, "a").write("finalized\\n")


KEEP = Finalized()  # a module global: only interpreter finalization deletes it
from tune.machine.distributed import leave_rank

leave_rank(3)
open(log, "a").write("returned\\n")
sys.exit(4)
"""


def run_script(tmp_path, **env):
    log = tmp_path / "log.txt"
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID")}
    res = subprocess.run([sys.executable, str(script), str(log)], env={**clean, **env}, timeout=120)
    return res.returncode, log.read_text().splitlines()


def test_a_rank_runs_its_exit_handlers_and_skips_finalization(tmp_path):
    code, lines = run_script(tmp_path, RANK="1", WORLD_SIZE="2")
    assert (code, lines) == (3, ["exit handler"])


def test_a_plain_process_exits_as_usual(tmp_path):
    code, lines = run_script(tmp_path)
    assert code == 4
    assert lines[:2] == ["returned", "exit handler"]
