"""Exporters `gguf` and `ollama`: a trained run as one GGUF file (llama.cpp, LM Studio, Ollama).

    tune export runs/qs --format gguf --quant q8_0 --out qs-q8_0.gguf
    tune export runs/qs --format ollama --quant q8_0 --out ollama/   # + Modelfile
    ollama create qs -f ollama/Modelfile

`--out` is the .gguf file, or a folder (the file is then named <run>-<quant>.gguf); ollama's
Modelfile goes beside the GGUF. k-quants (q4_k_m, q5_k_m, q6_k, ...) are made from tune's f16
file by llama.cpp's own quantizer through llama-cpp-python (the `llama` extra: quantize.py).
`--verify` (and `tune verify FILE --against RUN`) loads the file in llama.cpp and compares it
with the trained model (verify.py). `tokenizer.ggml.pre` is identified as llama.cpp's converter
does (pretok.py).

The core hands over a plain transformers folder (adapters merged) and temporary paths named as
the targets, in one folder; it moves them into place once all are written, never over a file
tune did not write. This plugin converts the folder with the `gguf` package (see convert.py for
why not llama.cpp's script), tokenizer and chat template embedded. Llama, Mistral and Qwen2
architectures (and Qwen3-MoE, Mixtral); f32, f16, bf16 and q8_0 tensors written here, the
llama.cpp quants by llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from tune.plugin import Exporter, Settings, TuneError, hookimpl

TUNE_API = ">=2,<3"


class GGUFSettings(Settings):
    """Options of `--format gguf` (`--quant`, `-x key=value`)."""

    quant: str = Field(
        "f16",
        description="f32 | f16 | bf16 | q8_0 | q4_k_m | q5_k_m | q6_k ... (k-quants by "
        "llama.cpp: pip install 'tune-plugin-gguf[llama]')",
    )
    name: str | None = Field(None, description="general.name in the file [default: the run's]")
    pre: str | None = Field(
        None,
        description="tokenizer.ggml.pre, llama.cpp's pre-tokenizer name [default: identified "
        "from the tokenizer; an unknown one is refused]",
    )

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


class GGUFExporter(Exporter):
    """`--format gguf`: one .gguf file."""

    def title(self) -> str:
        """general.name, and the file's name in a folder: `-x name=...`, else the run's."""
        return self.settings.name or _run_name(self.ctx)

    def targets(self, out: Path) -> list[Path]:
        out = Path(out)
        if out.suffix == ".gguf":
            gguf = out
        elif out.exists() and not out.is_dir():
            raise TuneError(
                f"--out '{out}' is a file that is not a .gguf.",
                where="tune export --out",
                fix="name a .gguf file, or a folder (the file is then named <name>-<quant>.gguf).",
            )
        else:  # a folder: the file is named after the run and the quant
            gguf = out / f"{self.title()}-{self.settings.quant}.gguf"
        return [gguf]

    def write(self, model_dir: Path, files: list[Path]) -> None:
        self.convert(Path(model_dir), Path(files[0]))

    def convert(self, model_dir: Path, gguf: Path):
        from tune_plugin_gguf.write import write_gguf

        vocab = write_gguf(
            model_dir,
            gguf,
            self.settings.quant,
            name=self.title(),
            metadata=_metadata(self.ctx),
            pre=self.settings.pre,
        )
        if vocab.pre_note and self.ctx is not None:
            self.ctx.print(f"[yellow]note:[/yellow] {vocab.pre_note}")
        return vocab

    def reads(self, path: Path) -> bool:
        from tune_plugin_gguf.verify import reads

        return Path(path).suffix == ".gguf" or reads(Path(path))

    def verify(self, files: list[Path], reference):
        from tune_plugin_gguf.verify import verify_gguf

        return verify_gguf(Path(files[0]), reference)


class OllamaExporter(GGUFExporter):
    """`--format ollama`: the GGUF and a Modelfile beside it (`FROM ./<file>.gguf`)."""

    modelfile: Path | None = None  # where the Modelfile will be, for its `ollama create` line

    def targets(self, out: Path) -> list[Path]:
        (gguf,) = super().targets(out)
        self.modelfile = gguf.parent / "Modelfile"
        return [gguf, self.modelfile]

    def write(self, model_dir: Path, files: list[Path]) -> None:
        from tune_plugin_gguf.ollama import write_modelfile

        gguf, modelfile = (Path(f) for f in files)
        vocab = self.convert(Path(model_dir), gguf)
        shown = self.modelfile or modelfile
        write_modelfile(gguf, vocab, self.settings, self.ctx, path=modelfile, shown=shown)

    def reads(self, path: Path) -> bool:
        return Path(path).name == "Modelfile" and Path(path).is_file()

    def verify(self, files: list[Path], reference):
        """The Modelfile's TEMPLATE and stops (Go-template semantics), then its GGUF."""
        from tune_plugin_gguf.ollama import verify_modelfile
        from tune_plugin_gguf.verify import verify_gguf

        modelfile = Path(files[-1])
        checks, gguf = verify_modelfile(modelfile, reference)
        return checks + (verify_gguf(gguf, reference) if gguf is not None else [])


@hookimpl
def tune_provide(provide):
    provide.exporter(
        "gguf",
        GGUFSettings,
        doc="one GGUF file (llama.cpp): Llama, Mistral, Qwen2",
        requires="gguf",
        build=GGUFExporter,
    )
    provide.exporter(
        "ollama",
        OllamaSettings,
        doc="GGUF + Modelfile (TEMPLATE from the trained chat template)",
        requires="gguf",
        build=OllamaExporter,
    )


def _run_name(ctx) -> str:
    output_dir = getattr(ctx.recipe.train, "output_dir", None)
    return Path(str(output_dir)).name if output_dir else "model"


def _metadata(ctx) -> dict:
    """general.* keys from the recipe: the base model the weights came from."""
    base = str(ctx.recipe.model.path)
    return {"basename": _run_name(ctx), "base_model": base}
