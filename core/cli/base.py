"""The `tune` command group and what its commands share (options, the console, the plugin
manager, recipe lookup). Imports no torch."""

from __future__ import annotations

from pathlib import Path

import click
from tune import __version__

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
