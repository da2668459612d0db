"""The `tune` command. Starts without importing torch: heavy modules load inside `run` only.

`base` holds the command group and what commands share; each command module registers itself
on it when imported; `main` runs it with tune's error handling.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from tune.cli import artifacts, estimate, export, plugins, training  # noqa: F401 (registers)
from tune.cli.base import (  # noqa: F401 (the command group and helpers, re-exported)
    CONTEXT_SETTINGS,
    _console,
    _plugin_manager,
    cli,
    find_recipe,
    override_option,
    plugin_option,
    recipe_dirs,
)
from tune.errors import TuneError

# True when this process's own command line is the command (`tune ...`, `python -m tune ...`),
# so `tune run` may re-execute it (tune.machine.hostmem); False under main(argv) or click's test runner.
OWN_COMMAND_LINE = False


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes print one paragraph and exit 2; bugs keep their traceback."""
    global OWN_COMMAND_LINE
    OWN_COMMAND_LINE = argv is None
    try:
        _main(argv)
    except SystemExit as exc:
        if OWN_COMMAND_LINE:  # a rank of a multi-process run leaves before finalization
            from tune.machine.distributed import leave_rank

            leave_rank(exc.code)
        raise


def _main(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="tune", standalone_mode=True)
    except TuneError as exc:
        from rich.markup import escape

        if os.environ.get("RANK", "0") == "0":  # one paragraph per job, not per rank
            console = _console(stderr=True)
            console.print(f"[bold red]error:[/bold red] {escape(exc.render())}", soft_wrap=True)
        _exit(2)
    except Exception as exc:  # a run stopped on a signal: its message and its own exit code
        if type(exc).__name__ != "RunStopped":
            raise
        from rich.markup import escape

        if os.environ.get("RANK", "0") == "0":  # one message per job, not per rank
            _console(stderr=True).print(
                f"[bold yellow]stopped:[/bold yellow] {escape(exc.message)}", soft_wrap=True
            )
        _exit(exc.code)


def _exit(code: int) -> None:
    """Exit with `code`; under `tune run --nproc-per-node`, rank 0 also leaves it for the
    relaunching process, so the job ends with the rank's code rather than torchrun's 1."""
    from tune.machine.distributed import EXIT_FILE

    target = os.environ.get(EXIT_FILE)
    if target and os.environ.get("RANK", "0") == "0":
        with contextlib.suppress(OSError):
            Path(target).write_text(str(code))
    sys.exit(code)
