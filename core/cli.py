"""The `tune` command. Starts without importing torch: heavy modules load inside `run` only."""

from __future__ import annotations

import json
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


def _group_provides(labels: list[str]) -> str:
    """['metric:a', 'metric:b@unsloth'] -> 'metric: a, b@unsloth' (one line per kind)."""
    kinds: dict[str, list[str]] = {}
    for label in labels:
        kind, _, name = label.partition(":")
        kinds.setdefault(kind, []).append(name)
    return "\n".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items())


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
    from tune.plugins import get_plugin_manager, split_plugin_options

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


# -- recipes ------------------------------------------------------------------------------------
def recipe_dirs() -> list[Path]:
    """Where shipped recipes live: ./recipes, then the recipes/ beside the source tree."""
    here = Path(__file__).resolve().parent.parent / "recipes"
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
        style = "" if info.status == "ok" else ("yellow" if info.status == "disabled" else "red")
        table.add_row(
            info.name,
            info.distribution,
            info.version,
            _group_provides(info.provides),
            "\n".join(info.hooks),
            f"[{style}]{info.status}[/{style}]" if style else info.status,
        )
    _console().print(table)


# -- validate and run ---------------------------------------------------------------------------
override_option = click.option(
    "-o",
    "--override",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. -o optimizer.lr=1e-4 -o adapt.0.r=8.",
)


def _validated(ctx, recipe_text, overrides, plugin_opts):
    from tune.context import RunContext
    from tune.data.sources import validate_all
    from tune.recipe import load_recipe

    pm = _plugin_manager(ctx, plugin_opts)
    recipe = load_recipe(find_recipe(recipe_text), list(overrides), plugins=pm)
    run_ctx = RunContext(recipe=recipe, output_dir=Path(recipe.train.output_dir))
    summary = validate_all(pm, run_ctx)
    return pm, recipe, summary


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recipe")
@override_option
@plugin_option
@click.pass_context
def validate(ctx, recipe: str, overrides: tuple[str, ...], plugin_opts: tuple[str, ...]) -> None:
    """Check a recipe, its plugins and its data files without loading a model."""
    from rich.table import Table

    _, rec, data_summary = _validated(ctx, recipe, overrides, plugin_opts)
    table = Table("CONCERN", "BACKEND", "PLUGIN", box=None)
    for role, label in (
        ("strategy", "strategy"),
        ("loader", "loader"),
        ("quantization", "quantize"),
    ):
        if role in rec.backends:
            sel = rec.backends[role]
            table.add_row(label, sel.backend.name, sel.backend.plugin)
    for sel in rec.backends["adapt"]:
        table.add_row("adapt", sel.backend.name, sel.backend.plugin)
    data_rows = [("data", rec.backends["data_format"])]
    data_rows += [("data mix", sel) for sel in rec.backends.get("data_mix", [])]
    data_rows.append(("optimizer", rec.backends["optimizer"]))
    for label, sel in data_rows:
        table.add_row(label, sel.backend.name, sel.backend.plugin)
    for name, sel in rec.backends["metrics"].items():
        table.add_row("metric", name, sel.backend.plugin)
    console = _console()
    console.print(f"[green]ok[/green] {rec.path}" + (f": {data_summary}" if data_summary else ""))
    console.print(table)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recipe")
@override_option
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in output_dir.")
@click.option(
    "--resume-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue from this checkpoint directory.",
)
@click.option("--overwrite", is_flag=True, help="Replace a previous run in output_dir.")
@click.option(
    "--nproc-per-node",
    type=int,
    default=1,
    show_default=True,
    help="Processes per node (relaunches under torchrun).",
)
@click.option("--nnodes", type=int, default=1, show_default=True, help="Number of nodes.")
@click.option("--node-rank", type=int, default=0, show_default=True, help="This node's rank.")
@click.option("--master-addr", default=None, help="Address of the rank-0 node (multi-node).")
@click.option("--master-port", type=int, default=None, help="Port of the rank-0 node (multi-node).")
@plugin_option
@click.pass_context
def run(
    ctx,
    recipe,
    overrides,
    resume,
    resume_from,
    overwrite,
    nproc_per_node,
    nnodes,
    node_rank,
    master_addr,
    master_port,
    plugin_opts,
) -> None:
    """Train with RECIPE (a path, or the name of a shipped recipe such as quickstart).

    With --nproc-per-node N (and --nnodes ...), tune validates once, then relaunches itself under
    torch.distributed.run; a run started by torchrun, deepspeed or srun joins by itself.
    """
    from tune.distributed import env_world, relaunch

    pm, rec, _ = _validated(ctx, recipe, overrides, plugin_opts)
    if (nproc_per_node > 1 or nnodes > 1) and env_world() is None:
        args = ["run", str(rec.path)]
        for item in overrides:
            args += ["-o", item]
        for item in list((ctx.find_root().obj or {}).get("plugin_opts", ())) + list(plugin_opts):
            args += ["-p", item]
        if resume:
            args.append("--resume")
        if resume_from is not None:
            args += ["--resume-from", str(resume_from)]
        if overwrite:
            args.append("--overwrite")
        code = relaunch(args, nproc_per_node, nnodes, node_rank, master_addr, master_port)
        sys.exit(code)
    from tune.train.run import run_training

    run_training(
        rec,
        pm,
        resume=resume or resume_from is not None,
        resume_from=resume_from,
        overwrite=overwrite,
    )


@cli.group(context_settings=CONTEXT_SETTINGS)
def data() -> None:
    """See the data as the model will: rendered tokens, lengths, batching efficiency."""


@data.command("preview")
@click.argument("recipe")
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many examples.")
@override_option
@plugin_option
@click.pass_context
def data_preview(ctx, recipe: str, count: int, overrides, plugin_opts) -> None:
    """Render examples exactly as trained: trained tokens green, masked tokens dim."""
    from tune.data.inspect import preview

    pm, rec, _ = _validated(ctx, recipe, overrides, plugin_opts)
    preview(rec, pm, count, _console())


@data.command("stats")
@click.argument("recipe")
@override_option
@plugin_option
@click.pass_context
def data_stats(ctx, recipe: str, overrides, plugin_opts) -> None:
    """Length histogram, packing/padding efficiency and the estimated number of steps."""
    from tune.data.inspect import stats

    pm, rec, _ = _validated(ctx, recipe, overrides, plugin_opts)
    stats(rec, pm, _console())


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the model."
)
@click.option(
    "--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True
)
@plugin_option
@click.pass_context
def merge(ctx, source: Path, out: Path, dtype: str, plugin_opts: tuple[str, ...]) -> None:
    """Merge a run's adapter (or a PEFT adapter dir) into its base: a plain transformers model."""
    from tune.merge import merge as merge_adapter

    pm = _plugin_manager(ctx, plugin_opts)
    written = merge_adapter(source, out, dtype, pm)
    _console().print(f"[green]merged[/green] {source} -> {written} ({dtype})")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, help="Send this message and exit (repeatable).")
@click.option(
    "--prompt-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Send this file's whole text as one message (e.g. a long document) and exit.",
)
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--system", default=None, help="System prompt (chat-trained runs).")
@click.option("--raw", is_flag=True, help="Continue text as written, without the chat template.")
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default=None,
    help="Weights dtype [default: bf16 on a GPU, fp32 on CPU].",
)
@plugin_option
@click.pass_context
def chat(
    ctx,
    source: Path,
    prompts: tuple[str, ...],
    prompt_file: Path | None,
    max_new_tokens: int,
    system: str | None,
    raw: bool,
    dtype: str | None,
    plugin_opts: tuple[str, ...],
) -> None:
    """Talk to a trained run (its output_dir or final/): one message per line, /exit to stop."""
    from tune.chat import open_session, repl

    messages = list(prompts)
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise TuneError(
                "file not found.", where=str(prompt_file), fix="give the path of a text file."
            )
        messages.append(prompt_file.read_text(encoding="utf-8"))
    pm = _plugin_manager(ctx, plugin_opts)
    if dtype is None:
        import torch

        dtype = "bf16" if torch.cuda.is_available() else "fp32"
    session = open_session(source, pm, dtype, max_new_tokens, system, raw)
    if messages:
        for message in messages:
            click.echo(session.reply(message))
        return
    lines = sys.stdin
    if sys.stdin.isatty():
        click.echo(f"tune chat: {source} (one message per line; /reset, /exit)", err=True)
        lines = _typed_lines()
    repl(session, lines, click.echo)


def _typed_lines():
    while True:
        try:
            yield input(">>> ")
        except (EOFError, KeyboardInterrupt):
            return


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes print one paragraph and exit 2; bugs keep their traceback."""
    try:
        cli.main(args=argv, prog_name="tune", standalone_mode=True)
    except TuneError as exc:
        from rich.markup import escape

        console = _console(stderr=True)
        console.print(f"[bold red]error:[/bold red] {escape(exc.render())}", soft_wrap=True)
        sys.exit(2)
