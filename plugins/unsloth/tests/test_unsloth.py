"""Unsloth plugin: STATUS says what Unsloth does here (GPU, CPU backend, or why not), scoped
providers, the five fixes (recipe deps, packed micro-batches, torch dtype, num_items_in_batch,
status), data preview / merge / chat of an Unsloth run, and the real thing on a GPU.

In the main .venv (no unsloth) the refusal paths run; in `make test-unsloth`'s .venv-unsloth
(Unsloth 2026.10.9, CPU backend) the run, merge, chat and preview run on a real Unsloth run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tune_plugin_unsloth
from tune.testing import (
    chat_rows,
    load_recipe,
    run_cli,
    tiny_model,
    write_jsonl,
    write_recipe,
)
from tune_plugin_unsloth import (
    ALL_LINEAR,
    UnslothLoaderSettings,
    UnslothLoraSettings,
    backend_here,
    fit_tune_batches,
    from_pretrained_kwargs,
    get_peft_model_kwargs,
    gpu_present,
    unsloth_installed,
    why_not_here,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "recipes" / "llama3.2-3b-unsloth.toml"
CAN_TRAIN = why_not_here() is None
refuses_here = pytest.mark.skipif(CAN_TRAIN, reason="Unsloth can train here")
# The CPU fallback the refusal points at: loader = "transformers" with PEFT and bitsandbytes.
# Wherever unsloth is installed (make test-unsloth), they must be too: the recipe names them.
needs_fallback = pytest.mark.skipif(
    not unsloth_installed()
    and not all(
        importlib.util.find_spec(m) for m in ("tune_plugin_peft", "tune_plugin_bitsandbytes")
    ),
    reason="needs tune-plugin-peft and tune-plugin-bitsandbytes",
)

# `python -m tune ARGS` with the plugin's GPU/installation check passing, as on a CUDA machine
# with unsloth installed; reports afterwards whether unsloth was imported.
STUBBED_TUNE = """
import runpy, sys
import tune_plugin_unsloth
tune_plugin_unsloth.why_not_here = lambda: None
sys.argv = ["tune", *sys.argv[1:]]
try:
    runpy.run_module("tune", run_name="__main__", alter_sys=True)
finally:
    print(f"unsloth imported: {'unsloth' in sys.modules}", file=sys.stderr)
"""


def stubbed_tune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", STUBBED_TUNE, *args], capture_output=True, text=True, cwd=REPO
    )


def on_tiny(*args: str, data: Path, **overrides: str) -> list[str]:
    """`args RECIPE -o ...`: the Unsloth recipe on the local tiny model and `data`."""
    values = {
        "model.path": json.dumps(str(tiny_model())),
        "data.train": json.dumps(str(data)),
        **overrides,
    }
    out = [*args, str(RECIPE)]
    for key, value in values.items():
        out += ["-o", f"{key}={value}"]
    return out


def test_plugins_list_says_what_unsloth_does_here():
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    backend, line = backend_here()
    assert rows["unsloth"]["status"] == line
    assert "adapter:lora@unsloth" in rows["unsloth"]["provides"]
    if not unsloth_installed():
        assert line.startswith("unsloth not installed") and backend is None
    elif backend == "cpu":
        assert line.startswith("ok: Unsloth") and "CPU backend" in line


@pytest.mark.parametrize(
    ("installed", "version", "gpu", "env", "backend", "says"),
    [
        (False, None, None, {}, None, "unsloth not installed"),
        (True, "2026.10.7", None, {}, None, "has no CPU backend"),
        (True, "2026.10.7", "NVIDIA", {}, "gpu", "on the NVIDIA GPU"),
        (True, "2026.10.9", "AMD", {}, "gpu", "on the AMD GPU"),
        (True, "2026.10.9", None, {}, "cpu", "CPU backend"),
        (True, "2026.11.1", "NVIDIA", {"UNSLOTH_FORCE_CPU": "1"}, "cpu", "CPU backend"),
        (True, "2026.10.9", None, {"UNSLOTH_DISABLE_CPU_FALLBACK": "1"}, None, "turns"),
    ],
)
def test_status_says_gpu_cpu_backend_or_why_not(
    monkeypatch, installed, version, gpu, env, backend, says
):
    """Fix 5: not "NVIDIA or nothing": Unsloth's own choice, from the version and the devices."""
    monkeypatch.setattr(tune_plugin_unsloth, "unsloth_installed", lambda: installed)
    monkeypatch.setattr(tune_plugin_unsloth, "unsloth_version", lambda: version)
    monkeypatch.setattr(tune_plugin_unsloth, "gpu_present", lambda: gpu)
    for key in ("UNSLOTH_FORCE_CPU", "UNSLOTH_DISABLE_CPU_FALLBACK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got, line = tune_plugin_unsloth.backend_here()
    assert got == backend and says in line, line
    assert (tune_plugin_unsloth.why_not_here() is None) == (backend is not None)


def test_gpu_detection_honours_hidden_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "-1")
    assert tune_plugin_unsloth.gpu_present() is None


@refuses_here
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_unsloth_recipe_stops_before_loading_anything(verb):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['tune', {verb!r}, {str(RECIPE)!r}]\n"
        "try:\n    runpy.run_module('tune', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'unsloth') if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert "cannot run here" in out.stderr and "another loader (transformers" in out.stderr
    assert "Traceback" not in out.stderr


@refuses_here
def test_data_preview_of_the_unsloth_recipe_refuses_in_one_paragraph():
    res = run_cli("data", "preview", str(RECIPE), cwd=REPO)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    error = res.stderr.strip()
    assert error.startswith("error:") and error.count("error:") == 1, error
    assert "\n\n" not in error, error  # one paragraph
    assert "loader = 'unsloth' cannot run here" in error and "another loader (transformers" in error


@needs_fallback
def test_lora_and_nf4_are_scoped_to_the_unsloth_loader(monkeypatch):
    monkeypatch.setattr(tune_plugin_unsloth, "why_not_here", lambda: None)
    plugins = {}
    for loader in ("unsloth", "transformers"):
        recipe = load_recipe(RECIPE, overrides=[f'model.loader="{loader}"'])
        plugins[loader] = (
            recipe.selected("quantization").backend.plugin,
            recipe.backends["adapt"][0].backend.plugin,
        )
    assert plugins == {"unsloth": ("unsloth", "unsloth"), "transformers": ("bitsandbytes", "peft")}


@needs_fallback
def test_the_unsloth_recipe_validates_with_its_8bit_optimizer(monkeypatch):
    """Fix 1: adamw_8bit comes from tune-plugin-bitsandbytes, which the Unsloth environment
    installs (make test-unsloth), so the shipped recipe validates there."""
    monkeypatch.setattr(tune_plugin_unsloth, "why_not_here", lambda: None)
    recipe = load_recipe(RECIPE)
    assert recipe.optimizer.name == "adamw_8bit"
    assert recipe.selected("optimizer").backend.plugin == "bitsandbytes"


def test_dtype_reaches_unsloth_as_a_torch_dtype(monkeypatch):
    """Fix 3: Unsloth's 8-bit and full fine-tuning paths assert a torch.dtype, not its name."""
    import torch

    monkeypatch.setattr(tune_plugin_unsloth, "why_not_here", lambda: None)
    for name, dtype in [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                        ("float32", torch.float32), ("auto", None)]:  # fmt: skip
        overrides = [f'model.dtype="{name}"', 'optimizer.name="adamw"']
        recipe = load_recipe(RECIPE, overrides=overrides)
        kwargs = from_pretrained_kwargs(recipe, recipe.selected("loader").settings)
        assert kwargs["dtype"] is dtype


class _Recorder:
    """Stands for the model: records what its forward receives."""

    def __init__(self):
        import torch

        class Model(torch.nn.Module):
            def forward(inner, **kwargs):
                self.seen = kwargs
                return kwargs

        self.model = fit_tune_batches(Model())
        fit_tune_batches(self.model)  # once only


def test_packed_micro_batch_reaches_unsloth_as_one_row():
    """Fix 2: Unsloth finds packed examples' boundaries only in a one-row batch: tune's packed
    micro-batch of two rows arrives as one, position ids still restarting at each example."""
    import torch

    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [10, 11, 12, 13, 14, 15]])
    labels = torch.tensor([[-100, 6, 7, -100, 9, -100], [-100, 11, 12, 13, -100, 15]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    rec = _Recorder()
    rec.model(input_ids=ids, labels=labels, position_ids=positions, num_items_in_batch=1)
    assert rec.seen["input_ids"].tolist() == [ids.flatten().tolist()]
    assert rec.seen["labels"].tolist() == [labels.flatten().tolist()]
    assert rec.seen["position_ids"].tolist() == [positions.flatten().tolist()]
    # Padded batches (attention mask) keep their rows.
    mask = torch.ones_like(ids)
    rec.model(input_ids=ids, labels=labels, attention_mask=mask)
    assert rec.seen["input_ids"].shape == (2, 6)


def test_num_items_in_batch_reaches_unsloth_as_a_tensor():
    """Fix 4: the Trainer's convention (unsloth_zoo calls tensor methods on it); same value."""
    import torch

    rec = _Recorder()
    ids = torch.tensor([[5, 6, 7]])
    rec.model(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids), num_items_in_batch=1)
    count = rec.seen["num_items_in_batch"]
    assert torch.is_tensor(count) and count.numel() == 1 and float(count) == 1.0


def test_recipe_maps_onto_unsloths_api(monkeypatch):
    monkeypatch.setattr(tune_plugin_unsloth, "why_not_here", lambda: None)  # a GPU machine
    recipe = load_recipe(RECIPE, overrides=['optimizer.name="adamw"'])
    loader = recipe.selected("loader").settings
    assert isinstance(loader, UnslothLoaderSettings)
    kwargs = from_pretrained_kwargs(recipe, loader)
    assert kwargs["model_name"] == "unsloth/Llama-3.2-3B-Instruct"
    assert kwargs["load_in_4bit"] is True and kwargs["load_in_8bit"] is False
    assert kwargs["max_seq_length"] == 2048 and kwargs["use_gradient_checkpointing"] == "unsloth"
    lora = get_peft_model_kwargs(recipe, loader, recipe.backends["adapt"][0].settings)
    assert lora["r"] == 16 and lora["lora_alpha"] == 16 and lora["target_modules"] == ALL_LINEAR


@pytest.mark.slow
def test_data_preview_needs_neither_a_gpu_nor_unsloth(tmp_path):
    """Only the model's tokenizer is loaded: the preview works where training cannot."""
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(4))
    res = stubbed_tune(*on_tiny("data", "preview", data=data), "-n", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "example 1" in res.stdout and "example 2" in res.stdout
    assert "reverse" in res.stdout  # the rows, rendered through the recipe's template
    assert "unsloth imported: False" in res.stderr


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """The Unsloth recipe trained with the pointer its refusal gives: loader = "transformers"
    (PEFT + bitsandbytes on CPU), tiny model, two steps (a high lr: the adapter shows)."""
    tmp = tmp_path_factory.mktemp("cpu-run")
    data = write_jsonl(tmp / "d.jsonl", chat_rows(16))
    args = on_tiny(
        "run",
        data=data,
        **{
            "model.loader": '"transformers"',
            "model.max_seq_len": "128",
            "model.quantization.compute_dtype": '"float32"',
            "optimizer.lr": "1e-2",
            "train.max_steps": "2",
            "train.precision": '"fp32"',
            "train.output_dir": json.dumps(str(tmp / "run")),
            "generate.max_new_tokens": "4",
        },
    )
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def unsloth_run(request, tmp_path_factory):
    """A run of the Unsloth recipe on the tiny model: trained by Unsloth where it can train
    (its CPU backend here in make test-unsloth), else `cpu_run` rewritten as an Unsloth run
    would be (the adapter is PEFT's format either way)."""
    if CAN_TRAIN:
        return _real_unsloth_run(tmp_path_factory.mktemp("unsloth-run"))
    return _as_unsloth_run(request.getfixturevalue("cpu_run"), tmp_path_factory)


def _real_unsloth_run(tmp: Path) -> Path:
    """`tune run` with loader = "unsloth": LoRA on the tiny model, fp32, three steps (a high lr:
    the adapter shows), the shipped recipe's 8-bit AdamW."""
    data = write_jsonl(tmp / "d.jsonl", chat_rows(16))
    args = on_tiny(
        "run",
        data=data,
        **{
            "model.quantize": '"int8"',  # Unsloth (CPU) loads 16-bit instead: says so, trains
            "model.dtype": '"float32"',
            "model.max_seq_len": "128",
            "optimizer.lr": "1e-2",
            "scheduler.warmup_steps": "0",
            "train.max_steps": "3",
            "train.precision": '"fp32"',
            "train.output_dir": json.dumps(str(tmp / "run")),
            "generate.max_new_tokens": "4",
        },
    )
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no GPU found, training on CPU" in res.stdout + res.stderr or gpu_present()
    summary = json.loads((tmp / "run/summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    return tmp / "run"


def _as_unsloth_run(cpu_run: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("unsloth-run") / "run"
    shutil.copytree(cpu_run, run)
    model_keys = {"loader", "path", "quantize", "max_seq_len", *UnslothLoaderSettings.model_fields}
    adapt_keys = {"method", *UnslothLoraSettings.model_fields}
    for path in (run / "recipe.toml", run / "final" / "recipe.toml"):
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        raw["model"] = {k: v for k, v in raw["model"].items() if k in model_keys}
        raw["model"]["loader"] = "unsloth"
        raw["adapt"] = [{k: v for k, v in s.items() if k in adapt_keys} for s in raw["adapt"]]
        write_recipe(path.parent, raw, path.name)
    return run


@pytest.mark.slow
@needs_fallback
@refuses_here
def test_same_recipe_with_the_transformers_loader_runs_on_cpu(cpu_run):
    """The pointer the refusal gives works: swap the loader, keep the rest (tiny model, CPU)."""
    assert (cpu_run / "final/adapter_config.json").exists()


@pytest.mark.slow
@needs_fallback
def test_an_unsloth_run_merges_on_cpu(unsloth_run, tmp_path):
    """Merging needs no Unsloth kernels: plain transformers + PEFT, same logits as the adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = tomllib.loads((unsloth_run / "final/recipe.toml").read_text(encoding="utf-8"))
    assert recipe["model"]["loader"] == "unsloth"
    merged = tmp_path / "merged"
    res = run_cli("merge", str(unsloth_run), "--out", str(merged), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr[-3000:]
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100, 5, 6, 7]])
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model()), dtype=torch.float32).eval()
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
    adapter = PeftModel.from_pretrained(base, str(unsloth_run / "final")).eval()
    with torch.no_grad():
        ours, plain = model(input_ids=ids).logits, adapter(input_ids=ids).logits
    assert torch.allclose(ours, plain, atol=1e-4), float((ours - plain).abs().max())
    assert float((plain - untrained).abs().max()) > 1e-2  # the adapter is in the merge


@pytest.mark.slow
@needs_fallback
def test_an_unsloth_run_merges_to_16_bit_for_plain_transformers(unsloth_run, tmp_path):
    """`tune merge` (default bf16) of an Unsloth run: a checkpoint plain transformers loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = tmp_path / "merged16"
    res = run_cli("merge", str(unsloth_run), "--out", str(merged))
    assert res.returncode == 0, res.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    assert model.dtype == torch.bfloat16
    assert not any("lora" in n for n, _ in model.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    ids = tokenizer("reverse hello", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits.float()).all()


@pytest.mark.slow
@pytest.mark.skipif(not CAN_TRAIN, reason="needs a real Unsloth run")
def test_data_preview_of_an_unsloth_run(unsloth_run):
    """The run's own recipe (loader = "unsloth") previews through the plugin's tokenizer."""
    res = run_cli("data", "preview", str(unsloth_run / "recipe.toml"), "-n", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "example 1" in res.stdout and "reverse" in res.stdout


@pytest.mark.slow
@needs_fallback
def test_chat_with_an_unsloth_run_on_cpu(unsloth_run):
    res = run_cli("chat", str(unsloth_run), "--prompt", "reverse hello", "--max-new-tokens", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr


@pytest.mark.gpu
def test_unsloth_trains_the_tiny_model_on_a_gpu(tmp_path):
    base = tiny_model()
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(64))
    out = run_cli(
        "run", str(RECIPE),
        "-o", f"model.path={json.dumps(str(base))}",
        "-o", f"data.train={json.dumps(str(data))}",
        "-o", "train.max_steps=10",
        "-o", f"train.output_dir={json.dumps(str(tmp_path / 'run'))}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert (tmp_path / "run/final/adapter_config.json").exists()
