"""`tune export` and `tune push`: a trained run leaves for where models are used."""

from __future__ import annotations

from pathlib import Path

import click
from tune.cli.base import CONTEXT_SETTINGS, _console, _plugin_manager, cli, plugin_option

trust_option = click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the model's own Python code (auto_map) if it needs it. Never read from the run.",
)
dtype_option = click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default="bf16",
    show_default=True,
    help="Precision adapters are merged in (a full fine-tune is read as saved).",
)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, help="An exporter: `tune plugins list` shows them.")
@click.option("--quant", default=None, help="Tensor type of the export, e.g. f16, q8_0.")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="File (or folder) to write."
)
@click.option(
    "-x",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An exporter option (TOML value syntax), e.g. -x temperature=0.2.",
)
@click.option(
    "--verify",
    "check",
    is_flag=True,
    help="Then load the file in its runtime (llama.cpp for gguf) and compare with the trained "
    "model on the run's own prompts; exit 1 when a check fails.",
)
@dtype_option
@trust_option
@plugin_option
@click.pass_context
def export(
    ctx, source, fmt, quant, out, options, check, dtype, trust_remote_code, plugin_opts
) -> None:
    """Write a run (or a model folder) in another format: tune export runs/qs --format gguf --quant q8_0 --out qs.gguf"""
    import time

    from tune.trained.export import export as run_export

    pm = _plugin_manager(ctx, plugin_opts)
    start = time.perf_counter()
    written = run_export(
        source,
        fmt,
        out,
        pm,
        quant=quant,
        options=list(options),
        precision=dtype,
        trust_remote_code=trust_remote_code,
    )
    seconds = time.perf_counter() - start
    console = _console()
    for path in written:
        size = path.stat().st_size / 2**20 if path.is_file() else 0.0
        console.print(f"[green]wrote[/green] {path} ({size:.1f} MiB)")
    console.print(f"exported {source} as {fmt} in {seconds:.1f}s")
    if check:
        from tune.trained.export import verify_export

        checks, reference = verify_export(
            source,
            fmt,
            written,
            pm,
            quant=quant,
            options=list(options),
            trust_remote_code=trust_remote_code,
        )
        _report(ctx, checks, reference, written[0], f"verify {written[0].name} against {source}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--against",
    required=True,
    type=click.Path(path_type=Path),
    help="The run (or model folder) the file was exported from.",
)
@trust_option
@plugin_option
@click.pass_context
def verify(ctx, artifact, against, trust_remote_code, plugin_opts) -> None:
    """Check an exported file in the runtime that serves it against the trained model: tune verify qs-q4_k_m.gguf --against runs/qs"""
    from tune.trained.verify import verify_file

    pm = _plugin_manager(ctx, plugin_opts)
    checks, reference = verify_file(artifact, against, pm, trust_remote_code)
    _report(ctx, checks, reference, artifact, f"verify {artifact.name} against {against}")


def _report(ctx, checks, reference, artifact: Path, title: str) -> None:
    """The table; exit 1 naming the failed checks."""
    from tune.trained.verify import VerifyFailed, refuse_failed, show

    show(checks, reference, _console(), title)
    try:
        refuse_failed(checks, artifact)
    except VerifyFailed as exc:
        from rich.markup import escape

        console = _console(stderr=True)
        console.print(f"[bold red]verify failed:[/bold red] {escape(str(exc))}", soft_wrap=True)
        ctx.exit(1)
    _console().print(f"[green]verified[/green] {artifact.name}: {len(checks)} checks")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option(
    "--merged/--adapter",
    "merged",
    default=None,
    help="Upload the merged model, or only the adapter [default: the adapter when there is one].",
)
@click.option(
    "--export",
    "exports",
    multiple=True,
    metavar="FORMAT[:QUANT]",
    help="Also upload the model in this format, e.g. --export gguf:q8_0 (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="List the files that would be uploaded; no upload.")
@dtype_option
@trust_option
@plugin_option
@click.pass_context
def push(
    ctx, source, repo_id, private, merged, exports, dry_run, dtype, trust_remote_code, plugin_opts
) -> None:
    """Upload a run to the Hugging Face Hub with a generated model card (token: HF_TOKEN or login)."""
    from tune.trained.push import push as run_push

    pm = _plugin_manager(ctx, plugin_opts)
    console = _console()
    result = run_push(
        source,
        repo_id,
        pm,
        private=private,
        merged=merged,
        exports=list(exports),
        dry_run=dry_run,
        precision=dtype,
        trust_remote_code=trust_remote_code,
    )
    if dry_run:
        console.print(f"would upload to {repo_id} ({'private' if private else 'public'}):")
        for name, size in result.files:
            console.print(f"  {name}  ({size} bytes)")
        return
    console.print(f"[green]pushed[/green] {len(result.files)} files to {result.url}")
