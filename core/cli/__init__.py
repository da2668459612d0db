"""The `tune` command. Starts without importing torch: heavy modules load inside `run` only."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click
from tune import __version__
from tune.errors import TuneError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _console(stderr: bool = False):
    """Rich console; when piped (CI logs, files), wide enough that tables do not wrap."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def plugin_option(func):
    """`-p no:NAME` disables a plugin, `-p module` loads one; accepted before or after the verb."""
    return click.option(
        "-p",
        "plugin_opts",
        multiple=True,
        metavar="no:NAME|MODULE",
        help="Disable a plugin (no:NAME) or load a plugin module by import path.",
    )(func)


def _plugin_manager(ctx: click.Context, local: tuple[str, ...], strict: bool = True):
    from tune.registry.manager import get_plugin_manager, split_plugin_options

    options = list((ctx.find_root().obj or {}).get("plugin_opts", ())) + list(local)
    disable, modules = split_plugin_options(options)
    return get_plugin_manager(disable, modules, strict=strict)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="tune")
@plugin_option
@click.pass_context
def cli(ctx: click.Context, plugin_opts: tuple[str, ...]) -> None:
    """tune: fine-tune LLMs with backends chosen by a TOML recipe.

    Start with `tune run recipes/quickstart.toml`. `python -m tune` is the same command
    (torchtune also installs a `tune` script).
    """
    ctx.obj = {"plugin_opts": plugin_opts}


override_option = click.option(
    "-o",
    "--override",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. -o optimizer.lr=1e-4 -o adapt.0.r=8.",
)


# -- recipe lookup -------------------------------------------------------------------------------
def recipe_dirs() -> list[Path]:
    """Where shipped recipes live: ./recipes, then the recipes/ beside the source tree."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    return [d for d in dict.fromkeys([Path.cwd() / "recipes", here]) if d.is_dir()]


def find_recipe(text: str) -> Path:
    """A recipe path, or the name of a shipped recipe (`quickstart`)."""
    path = Path(text)
    if path.exists() or path.suffix == ".toml" or "/" in text:
        return path
    for folder in recipe_dirs():
        candidate = folder / f"{text}.toml"
        if candidate.is_file():
            return candidate
    return path


# True when this process's own command line is the command (`tune ...`, `python -m tune ...`),
# so `tune run` may re-execute it (tune.machine.hostmem); False under main(argv) or click's test runner.
OWN_COMMAND_LINE = False


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes print one paragraph and exit 2; bugs keep their traceback."""
    global OWN_COMMAND_LINE
    OWN_COMMAND_LINE = argv is None
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


# The commands register themselves on `cli` when imported (after `cli` exists).
from tune.cli import artifacts, estimate, export, plugins, training  # noqa: E402, F401
