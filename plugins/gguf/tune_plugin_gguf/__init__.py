"""Exporters `gguf` and `ollama`: a trained run as one GGUF file (llama.cpp, LM Studio, Ollama).

    tune export runs/qs --format gguf --quant q8_0 --out qs-q8_0.gguf
    tune export runs/qs --format ollama --quant q8_0 --out ollama/   # + Modelfile
    ollama create qs -f ollama/Modelfile

`--out` is the .gguf file, or a folder (the file is then named <run>-<quant>.gguf).

The core hands over a plain transformers folder (adapters merged); this plugin converts it with
the `gguf` package (see convert.py for why not llama.cpp's script), tokenizer and chat template
embedded. Llama, Mistral and Qwen2 architectures; f32, f16, bf16 and q8_0 tensors.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from tune.plugin import Settings, hookimpl

TUNE_API = ">=1,<2"


class GGUFSettings(Settings):
    """Options of `--format gguf` (`--quant`, `-x key=value`)."""

    quant: str = Field("f16", description="f32 | f16 | bf16 | q8_0 (k-quants: llama-quantize)")
    name: str | None = Field(None, description="general.name in the file [default: the run's]")

    @field_validator("quant")
    @classmethod
    def _known(cls, quant: str) -> str:
        """Checked with the options, before the model is merged (a TuneError naming the fix)."""
        from tune_plugin_gguf.convert import check_quant

        check_quant(quant, "tune export --quant")
        return quant


class OllamaSettings(GGUFSettings):
    """Options of `--format ollama`: the GGUF's, plus the Modelfile's default parameters."""

    temperature: float = Field(0.7, ge=0, description="PARAMETER temperature")
    top_p: float = Field(0.9, gt=0, le=1, description="PARAMETER top_p")
    num_ctx: int | None = Field(None, gt=0, description="context [default: [model] max_seq_len]")
    system: str | None = Field(None, description="SYSTEM prompt of the Modelfile")


@hookimpl
def tune_provide(provide):
    provide.exporter(
        "gguf",
        GGUFSettings,
        doc="one GGUF file (llama.cpp): Llama, Mistral, Qwen2",
        requires="gguf",
    )
    provide.exporter(
        "ollama",
        OllamaSettings,
        doc="GGUF + Modelfile (TEMPLATE from the trained chat template)",
        requires="gguf",
    )


@hookimpl
def tune_export(name, settings, model_dir, out, ctx):
    from tune_plugin_gguf.write import write_gguf

    out = Path(out)
    title = settings.name or _run_name(ctx)
    if out.suffix != ".gguf":  # a folder: the file is named after the run and the quant
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{title}-{settings.quant}.gguf"
    vocab = write_gguf(Path(model_dir), out, settings.quant, name=title, metadata=_metadata(ctx))
    if name != "ollama":
        return [out]
    from tune_plugin_gguf.ollama import write_modelfile

    return [out, write_modelfile(out, vocab, settings, ctx)]


def _run_name(ctx) -> str:
    output_dir = getattr(ctx.recipe.train, "output_dir", None)
    return Path(str(output_dir)).name if output_dir else "model"


def _metadata(ctx) -> dict:
    """general.* keys from the recipe: the base model the weights came from."""
    base = str(ctx.recipe.model.path)
    return {"basename": _run_name(ctx), "base_model": base}
