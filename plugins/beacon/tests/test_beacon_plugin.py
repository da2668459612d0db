"""The beacon plugin inside tune: the tiny recipe trains, saves and reloads, composes with LoRA,
generates past the base model's positions, and its metrics run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tune.plugin import hookimpl
from tune.testing import (
    build_model,
    chat_rows,
    load_recipe,
    recipe_dict,
    run_cli,
    tiny_model,
    write_jsonl,
    write_plugin,
    write_recipe,
)

REPO = Path(__file__).resolve().parents[3]
PASSKEY_TRAIN = REPO / "recipes" / "data" / "passkey-train.jsonl"
PASSKEY_EVAL = REPO / "recipes" / "data" / "passkey-eval.jsonl"
PROBE_IDS = [[1, 40, 50, 60, 70, 80, 90, 100, 5, 6, 7]]


class Probe:
    """Metric `probe`: records the final model's logits on PROBE_IDS, to compare with reloads."""

    def __init__(self):
        self.logits: list[torch.Tensor] = []

    @hookimpl
    def tune_provide(self, provide):
        provide.metric("probe", doc="records the model's logits on PROBE_IDS")

    @hookimpl
    def tune_evaluate(self, names, settings, model, data, ctx):
        if "probe" not in names:
            return None
        with torch.no_grad():
            self.logits.append(model(input_ids=torch.tensor(PROBE_IDS)).logits.float().cpu())
        return {"probe": float(self.logits[-1].abs().mean())}


@pytest.fixture
def probe(tune_plugin):
    """The probe metric, registered for this test's in-process runs."""
    plugin = Probe()
    tune_plugin(plugin, "probe")
    return plugin


def longctx(tmp_path, adapt_extra=(), **sections):
    data = recipe_dict(
        tmp_path,
        model={"max_seq_len": 2048},
        adapt=[
            {
                "method": "beacon",
                "window": 128,
                "ratios": [2, 4, 8],
                "inference_ratio": 4,
                "only_train_beacon": False,
            },
            *adapt_extra,
        ],
        data={"format": "text", "train": str(PASSKEY_TRAIN), "eval": str(PASSKEY_EVAL)},
        optimizer={"lr": 2e-3},
        train={"micro_batch_size": 1, "max_steps": 6, "gradient_checkpointing": True},
        **sections,
    )
    data["data"].pop("template")
    return data


@pytest.mark.slow
def test_tiny_longctx_recipe_trains(tmp_path):
    out = tmp_path / "run"
    res = run_cli(
        "run", str(REPO / "recipes" / "longctx-tiny.toml"),
        "-o", f"train.output_dir={json.dumps(str(out))}",
        "-o", "train.max_steps=8",
        "-o", "eval.passkey.lengths=[256]", "-o", "eval.passkey.depths=[0.5]",
        "-o", "eval.passkey.trials=1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_loss"] < 0.8 * summary["first_loss"]
    assert {"passkey", "passkey_digits", "long_ppl@1-128", "perplexity"} <= set(summary["eval"])
    assert (out / "final/beacon.safetensors").exists() and (out / "final/beacon.json").exists()


@pytest.mark.slow
def test_saved_beacon_reloads_onto_the_base(tmp_path, run_recipe, probe):
    from transformers import AutoModelForCausalLM
    from tune_plugin_beacon import load_beacon

    data = longctx(tmp_path, eval={"metrics": ["probe"]})
    data["adapt"][0]["only_train_beacon"] = True
    run_recipe(data)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model()), dtype=torch.float32).eval()
    model = load_beacon(base, tmp_path / "run/final")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(PROBE_IDS)).logits
    assert torch.allclose(logits, probe.logits[-1], atol=1e-5)


@pytest.mark.slow
def test_beacon_then_lora_trains_saves_and_merges(tmp_path, run_recipe, probe):
    lora = {"method": "lora", "r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}
    data = longctx(tmp_path, adapt_extra=[lora], eval={"metrics": ["probe"]})
    data["adapt"][0]["only_train_beacon"] = True
    summary, _ = run_recipe(data)
    assert summary["last_loss"] < summary["first_loss"]
    final = tmp_path / "run/final"
    assert (final / "adapter_config.json").exists() and (final / "beacon.safetensors").exists()
    from safetensors.torch import load_file

    saved = load_file(str(final / "beacon.safetensors"))
    assert "model.beacon_embedding" in saved and all("lora" not in k for k in saved)
    # LoRA froze everything else; the beacon weights stayed trainable and changed
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model()))
    eos_row = base.get_input_embeddings().weight.detach()[base.config.eos_token_id]
    assert not torch.allclose(saved["model.beacon_embedding"], eos_row)
    # merge: LoRA folded into the base, the beacon files beside it; same logits as in training
    from tune_plugin_beacon import load_beacon

    merged = tmp_path / "merged"
    res = run_cli("merge", str(tmp_path / "run"), "--out", str(merged), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    model = load_beacon(model, merged)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(PROBE_IDS)).logits
    assert torch.allclose(logits, probe.logits[-1], atol=1e-4)


def test_beacon_weights_stay_trainable_when_lora_follows(tmp_path):
    """The beacon marks its own parameters (`keep_trainable`): LoRA freezes the rest."""
    lora = {"method": "lora", "r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}
    data = longctx(tmp_path, adapt_extra=[lora])
    data["adapt"][0]["only_train_beacon"] = True
    model, _ = build_model(load_recipe(write_recipe(tmp_path, data)), tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    beacon = {n for n in trainable if "beacon_" in n and "lora_" not in n}
    assert beacon and any("beacon_embedding" in n for n in beacon)
    assert trainable - beacon and all("lora_" in n for n in trainable - beacon)


# An exporter that must never be reached: the core refuses a beacon run before loading anything.
NEVER_EXPORTER = """
from tune.plugin import Exporter, hookimpl


class Never(Exporter):
    def write(self, model_dir, files):
        raise AssertionError("a beacon run reached the exporter")


@hookimpl
def tune_provide(provide):
    provide.exporter("never", doc="refuses to be reached", build=Never)
"""


def test_export_of_a_beacon_run_is_refused_before_loading(tmp_path):
    """`mergeable=False`: the beacon adds modules the base architecture lacks, so no plain
    model of it can be written; the core says so from the recipe alone (final/ holds no
    weights here, and nothing is loaded)."""
    env = write_plugin(tmp_path, "never_exporter", NEVER_EXPORTER)
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    write_recipe(final, longctx(tmp_path))
    out = tmp_path / "exported"
    res = run_cli(
        "export", str(tmp_path / "run"), "--format", "never", "--out", str(out),
        "-p", "never_exporter", env=env,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    error = " ".join(res.stderr.split())
    assert "method = 'beacon'" in error and "does not fold into the base weights" in error, error
    assert "Traceback" not in res.stderr and not out.exists()


def test_generation_past_the_base_models_positions():
    from transformers import AutoModelForCausalLM
    from tune_plugin_beacon.model import BeaconConfig, attach

    path = tiny_model("tiny-llama", {"max_position_embeddings": 256})
    model = attach(
        AutoModelForCausalLM.from_pretrained(str(path)).eval(),
        BeaconConfig(window=64, inference_ratio="adapt", ratios=[2, 4, 8, 16]),
    )
    prompt = torch.randint(10, 250, (1, 3000), generator=torch.Generator().manual_seed(0))
    out = model.generate(input_ids=prompt, max_new_tokens=5, eos_token_id=[])
    assert out.shape == (1, 3005)
    assert torch.equal(out[:, :3000], prompt)


def tiny_longctx_run(recipe: str, out: Path, *extra: str):
    """A shipped GPU long-context recipe, every key kept, with a tiny model, short sequences
    and our own data (local files stand in for the Hub sources)."""
    overrides = [
        'model.path="tune:tiny-llama"',
        "model.max_seq_len=2048",
        'model.dtype="float32"',
        'train.precision="fp32"',
        "train.max_steps=2",
        "train.grad_accum=2",
        "train.save_every=0",
        f"train.output_dir={json.dumps(str(out))}",
        "eval.passkey.lengths=[1100]",
        "eval.passkey.depths=[0.5]",
        "eval.passkey.trials=1",
        *extra,
    ]
    args = ["run", str(REPO / "recipes" / recipe)]
    for o in overrides:
        args += ["-o", o]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), res.stdout


@pytest.mark.slow
def test_llama_longctx_stages_run_on_cpu_with_a_tiny_model(tmp_path):
    """Stage 1 (long documents, window 1024, ratios up to 32, short documents skipped), then
    stage 2 (long chats + a share of documents) starting from stage 1's beacon weights: with a
    vanishing lr its final beacon equals stage 1's (fresh copies of the base would differ by
    stage 1's updates), so the weights really carried over."""
    from safetensors.torch import load_file

    stage1 = tmp_path / "stage1"
    summary, _ = tiny_longctx_run(
        "llama-longctx.toml",
        stage1,
        f"data.train={json.dumps(str(PASSKEY_TRAIN))}",
        f"data.eval={json.dumps(str(PASSKEY_EVAL))}",
        'data.source.split="train"',  # local files: one split each, read in full
        'data.source.eval_split="train"',
        "data.source.streaming=false",
        "data.min_tokens=1000",
        "train.eval_every=0",
        "eval.long_ppl.buckets=[1024,2048]",
    )
    assert summary["data"]["short"] > 0  # documents under 1,000 tokens were skipped
    assert {"passkey", "long_ppl@1-1024"} <= set(summary["eval"])
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_rows(8))
    stage2 = tmp_path / "stage2"
    summary, stdout = tiny_longctx_run(
        "llama-longctx-stage2.toml",
        stage2,
        f"adapt.0.init_from={json.dumps(str(stage1 / 'final'))}",
        f"data.train={json.dumps(str(chats))}",
        "data.min_tokens=0",
        f"data.mix.0.train={json.dumps(str(PASSKEY_TRAIN))}",
        'data.mix.0.source.split="train"',
        "data.mix.0.epochs=1",
        "data.mix.0.min_tokens=0",
        "optimizer.lr=1e-30",  # steps too small to move a float32 weight
    )
    assert "beacon: weights from" in " ".join(stdout.split())
    first = load_file(str(stage1 / "final/beacon.safetensors"))
    second = load_file(str(stage2 / "final/beacon.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_init_from_a_folder_without_beacon_weights_is_one_paragraph(tmp_path):
    data = longctx(tmp_path)
    data["adapt"][0]["init_from"] = str(tmp_path / "nowhere")
    from tune.testing import write_recipe

    res = run_cli("run", str(write_recipe(tmp_path, data)))
    assert res.returncode == 2 and "init_from" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_chat_reads_a_prompt_past_the_base_models_positions(tmp_path, run_recipe):
    """`tune chat` loads base + trained beacon and answers a prompt of 3x the base's positions,
    exactly as the beacon model in this process does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tune_plugin_beacon import load_beacon

    data = longctx(tmp_path)
    data["train"]["max_steps"] = 2
    data["adapt"][0]["inference_ratio"] = 8
    run_recipe(data)
    final = tmp_path / "run" / "final"
    prompt = "The grass is green. The sky is blue. " * 340  # ~12.6k tokens vs 4096 positions
    (tmp_path / "long.txt").write_text(prompt)
    res = run_cli(
        "chat", str(tmp_path / "run"), "--prompt-file", str(tmp_path / "long.txt"),
        "--max-new-tokens", "5",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]

    tokenizer = AutoTokenizer.from_pretrained(str(final))
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    load_beacon(model, final)
    ids = tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False, return_tensors="pt")
    assert ids["input_ids"].shape[1] > 3 * model.config.max_position_embeddings
    out = model.generate(input_ids=ids["input_ids"], max_new_tokens=5)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert res.stdout.rstrip("\n") == expected
