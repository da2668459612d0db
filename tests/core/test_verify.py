"""After training: `tune merge` of a QLoRA run measured against what was trained, and the
verification contract an exporter plugin answers (`Exporter.verify`, `Exporter.reads`)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tune.plugin import Exporter, hookimpl
from tune.testing import plugin_manager, recipe_dict, run, run_cli, tiny_model, write_recipe

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def qlora(tmp_path_factory) -> Path:
    """A QLoRA run (nf4 base, LoRA on every linear), 3 steps at a high rate on CPU."""
    tmp = tmp_path_factory.mktemp("qlora")
    data = recipe_dict(
        tmp,
        model={"quantize": "nf4"},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        train={"max_steps": 3, "output_dir": str(tmp / "run")},
    )
    data["optimizer"]["lr"] = 1e-2
    run(write_recipe(tmp, data))
    return tmp / "run"


def _trained_logits(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """What the run trained, built with transformers + PEFT alone: the base quantized to nf4 as
    in training, the adapter on top, unmerged."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        str(tiny_model("tiny-llama")),
        dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    model = peft.PeftModel.from_pretrained(quantized, str(run_dir / "final")).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_qlora_merge_reports_its_distance_and_dequantized_merge_is_what_was_trained(
    qlora, tmp_path
):
    """`tune merge` of a QLoRA run prints how far the usual merge (adapter into the 16-bit base)
    and dequantize-then-merge land from the trained model, offers --dequantize when closer, and
    the --dequantize model's logits are the trained (4-bit base + adapter) model's."""
    from rich.console import Console
    from tune.trained.merge import merge

    shown = io.StringIO()
    console = Console(file=shown, width=200)
    merge(qlora, tmp_path / "usual", "fp32", plugin_manager(), console=console)
    report = shown.getvalue()
    assert "16-bit base + adapter" in report and "dequantized base + adapter" in report
    assert "--dequantize" in report  # offered: closer here
    merge(qlora, tmp_path / "dq", "fp32", plugin_manager(), dequantize=True, console=console)
    ids = torch.arange(3, 60).unsqueeze(0)
    trained = _trained_logits(qlora, ids)
    dequantized = (_logits(tmp_path / "dq", ids) - trained).abs().max().item()
    usual = (_logits(tmp_path / "usual", ids) - trained).abs().max().item()
    # bitsandbytes' own CPU 4-bit matmul differs from float math on the same weights by ~5e-3
    # on these logits (measured); the usual merge adds the base's 4-bit rounding (~8e-2)
    assert dequantized <= 0.02 and usual > 5 * dequantized, (dequantized, usual)


class Plain(Exporter):
    def write(self, model_dir, files):
        files[0].write_text("plain")

    def reads(self, path):
        return Path(path).suffix == ".plain"

    def verify(self, files, reference):
        text = Path(files[0]).read_text()
        return [("content", text == "plain", f"read {text!r}"), ("prompts", None, "shown")]


class PlainPlugin:
    @hookimpl
    def tune_provide(self, provide):
        provide.exporter("plain", doc="a file that says plain", build=Plain)


def test_verify_asks_the_exporter_that_reads_the_file(tmp_path, tune_plugin):
    """`tune verify FILE --against RUN` finds the exporter by `reads`, prints its checks, and a
    failed one makes verification fail naming it."""
    from tune.trained.verify import VerifyFailed, failed, refuse_failed, verify_file

    tune_plugin(PlainPlugin())
    data = recipe_dict(tmp_path, train={"max_steps": 1, "output_dir": str(tmp_path / "run")})
    run(write_recipe(tmp_path, data))
    good, bad = tmp_path / "m.plain", tmp_path / "n.plain"
    good.write_text("plain")
    bad.write_text("broken")
    checks, reference = verify_file(good, tmp_path / "run", plugin_manager())
    assert [c.name for c in checks] == ["content", "prompts"] and not failed(checks)
    assert reference.prompts and "train rows" in reference.source
    checks, _ = verify_file(bad, tmp_path / "run", plugin_manager())
    with pytest.raises(VerifyFailed, match="content"):
        refuse_failed(checks, bad)
    unknown = run_cli("verify", str(tmp_path / "train.jsonl"), "--against", str(tmp_path / "run"))
    assert unknown.returncode == 2 and "no installed exporter recognizes" in unknown.stderr
