"""`tune merge`, `tune chat` and `tune eval`: a trained run loaded back."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tune.cli.base import (
    CONTEXT_SETTINGS,
    _console,
    _plugin_manager,
    cli,
    override_option,
    plugin_option,
)
from tune.cli.export import trust_option
from tune.errors import TuneError


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the model."
)
@click.option(
    "--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True
)
@click.option(
    "--dequantize",
    is_flag=True,
    help="QLoRA runs: fold the adapter into the dequantized 4-bit base it was trained on "
    "(tune merge reports which of the two merges is closer to the trained model).",
)
@trust_option
@plugin_option
@click.pass_context
def merge(
    ctx, source: Path, out: Path, dtype: str, dequantize: bool, trust_remote_code: bool, plugin_opts
) -> None:
    """Merge a run's adapter (or a PEFT adapter dir) into its base: a plain transformers model."""
    from tune.trained.merge import merge as merge_adapter

    pm = _plugin_manager(ctx, plugin_opts)
    written = merge_adapter(
        source, out, dtype, pm, trust_remote_code, dequantize=dequantize, console=_console()
    )
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
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Show this image with the first message (repeatable; runs trained on image data).",
)
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default=None,
    help="Weights dtype [default: bf16 on a GPU, fp32 on CPU].",
)
@trust_option
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
    images: tuple[Path, ...],
    dtype: str | None,
    trust_remote_code: bool,
    plugin_opts: tuple[str, ...],
) -> None:
    """Talk to a trained run (its output_dir or final/): one message per line, /exit to stop."""
    from tune.trained.chat import open_session, repl

    messages = list(prompts)
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise TuneError(
                "file not found.", where=str(prompt_file), fix="give the path of a text file."
            )
        messages.append(prompt_file.read_text(encoding="utf-8"))
    pm = _plugin_manager(ctx, plugin_opts)
    if dtype is None:
        from tune.machine.devices import auto_device, resolve_precision

        dtype = resolve_precision("auto", auto_device())
    session = open_session(
        source, pm, dtype, max_new_tokens, system, raw, trust_remote_code, [str(i) for i in images]
    )
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


@cli.command("eval", context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="A metric to compute (repeatable) [default: the recipe's].",
)
@override_option
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default=None,
    help="Weights dtype [default: bf16 on a GPU, fp32 on CPU].",
)
@trust_option
@plugin_option
@click.pass_context
def evaluate(ctx, source: Path, metrics, overrides, dtype, trust_remote_code, plugin_opts) -> None:
    """Compute metrics on a trained run (or a model directory): e.g. lm-eval-harness tasks.

    tune eval runs/qs --metric lm_eval -o eval.lm_eval.tasks='["hellaswag"]'
    """
    from rich.table import Table
    from tune.machine.devices import auto_device, resolve_precision
    from tune.trained.evaluate import evaluate_run

    pm = _plugin_manager(ctx, plugin_opts)
    console = _console()
    precision = dtype or resolve_precision("auto", auto_device())
    results, written = evaluate_run(
        source, list(metrics), list(overrides), precision, pm, console, trust_remote_code
    )
    table = Table("METRIC", "VALUE", box=None)
    for key, value in results.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"[green]written[/green] {written}")
