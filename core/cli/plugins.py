"""`tune plugins ...` and `tune recipes list`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tune.cli.base import (
    CONTEXT_SETTINGS,
    _console,
    _plugin_manager,
    cli,
    plugin_option,
    recipe_dirs,
)
from tune.registry.scaffold import KINDS as SCAFFOLD_KINDS


def _group_provides(labels: list[str]) -> str:
    """['metric:a', 'metric:b@unsloth'] -> 'metric: a, b@unsloth' (one line per kind)."""
    kinds: dict[str, list[str]] = {}
    for label in labels:
        kind, _, name = label.partition(":")
        kinds.setdefault(kind, []).append(name)
    return "\n".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items())


@cli.group(context_settings=CONTEXT_SETTINGS)
def recipes() -> None:
    """Shipped recipes."""


@recipes.command("list")
def recipes_list() -> None:
    """List shipped recipes with their one-line description."""
    from rich.table import Table
    from tune.recipe import first_comment

    table = Table("NAME", "PATH", "DESCRIPTION", box=None)
    seen = set()
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.toml")):
            if path.stem in seen:
                continue
            seen.add(path.stem)
            shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
            table.add_row(path.stem, str(shown), first_comment(path))
    _console().print(table)


# -- plugins ------------------------------------------------------------------------------------
@cli.group(context_settings=CONTEXT_SETTINGS)
def plugins() -> None:
    """Installed plugins and the backends they provide."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@plugin_option
@click.pass_context
def plugins_list(ctx: click.Context, as_json: bool, plugin_opts: tuple[str, ...]) -> None:
    """List plugins: NAME, DISTRIBUTION, VERSION, PROVIDES, HOOKS, STATUS."""
    pm = _plugin_manager(ctx, plugin_opts, strict=False)
    for first, second in pm.conflicts:
        for backend in (first, second):
            info = pm.infos[backend.plugin]
            if info.status == "ok":
                info.status = f"conflict: {backend.label} also served by " + (
                    second.plugin if backend is first else first.plugin
                )
    infos = list(pm.infos.values())
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    from rich.table import Table

    table = Table(box=None)
    for column in ("NAME", "DISTRIBUTION", "VERSION", "PROVIDES", "HOOKS", "STATUS"):
        table.add_column(column, overflow="fold")
    for info in infos:
        ok = info.status == "ok" or info.status.startswith("ok:")
        style = "" if ok else ("yellow" if info.status == "disabled" else "red")
        table.add_row(
            info.name,
            info.distribution,
            info.version,
            _group_provides(info.provides),
            "\n".join(info.hooks),
            f"[{style}]{info.status}[/{style}]" if style else info.status,
        )
    _console().print(table)


@plugins.command("new")
@click.argument("name")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(list(SCAFFOLD_KINDS)),
    help="What the plugin provides.",
)
@click.option("--backend", default=None, help="The name recipes use [default: NAME].")
@click.option(
    "--dir",
    "dest",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Where to create the tune-plugin-NAME folder.",
)
def plugins_new(name: str, kind: str, backend: str | None, dest: Path) -> None:
    """Create tune-plugin-NAME: a working plugin of KIND with tests, ready to pip install."""
    from rich.markup import escape
    from tune.registry.scaffold import new_plugin

    root = new_plugin(name, kind, dest, backend)
    _console().print(
        f"[green]created[/green] {root}\n"
        + escape(f"  pip install -e '{root}[test]'   (then: tune plugins list)\n")
        + f"  pytest {root / 'tests'}   (a tiny real run through the plugin)"
    )
