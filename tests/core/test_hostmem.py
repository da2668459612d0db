"""The host allocator `tune run` starts with (tune.machine.hostmem): the settings, the re-execution, and
that they keep a LoRA model's heap close to what is alive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from tune.machine import hostmem
from tune.testing import recipe_dict, run_cli, write_recipe

on_cpu_glibc = pytest.mark.skipif(
    not hostmem._is_glibc() or hostmem._gpu_visible(), reason="glibc, no GPU visible"
)


def test_settings_respect_the_user(monkeypatch):
    monkeypatch.setattr(hostmem, "_is_glibc", lambda: True)
    monkeypatch.setattr(hostmem, "_gpu_visible", lambda: False)
    env = hostmem.tuned_environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": hostmem.TUNABLES}
    # other tunables are kept; any malloc tunable of the user's wins; the opt-out is honoured
    kept = hostmem.tuned_environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert kept["GLIBC_TUNABLES"] == f"glibc.pthread.rseq=0:{hostmem.TUNABLES}"
    assert hostmem.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None
    assert hostmem.tuned_environment({"TUNE_HOST_MALLOC": "system"}) is None
    assert "your GLIBC_TUNABLES" in hostmem.describe({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    # a GPU machine keeps glibc's defaults unless asked
    monkeypatch.setattr(hostmem, "_gpu_visible", lambda: True)
    assert hostmem.tuned_environment({}) is None
    assert "a GPU is visible" in hostmem.describe({})
    asked = hostmem.tuned_environment({"TUNE_HOST_MALLOC": "tuned"})
    assert asked["GLIBC_TUNABLES"] == hostmem.TUNABLES
    monkeypatch.setattr(hostmem, "_is_glibc", lambda: False)
    assert hostmem.tuned_environment({}) is None
    assert "not glibc" in hostmem.describe({})


@on_cpu_glibc
def test_tune_run_restarts_itself_with_the_settings(tmp_path):
    """The same command line runs again (its overrides too), with the tunables in its
    environment; the run says which allocator it had, and the opt-out keeps glibc's own."""
    path = write_recipe(tmp_path, recipe_dict(tmp_path, train={"max_steps": 1}))
    out = run_cli("run", str(path), "-o", "train.max_steps=2", env={"GLIBC_TUNABLES": ""})
    assert out.returncode == 0, out.stderr
    assert "host allocator: glibc with tcache and fastbins off" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and "tcache and fastbins off" in summary["host_allocator"]
    out = run_cli("run", str(path), "--overwrite", env={"TUNE_HOST_MALLOC": "system"})
    assert out.returncode == 0, out.stderr
    assert "host allocator: glibc defaults" in out.stdout


# A LoRA Llama trained for four steps of different lengths, in a fresh process: the heap it
# is left with, against the most that was alive at once (after each forward).
STEPS = textwrap.dedent(
    """
    import ctypes, json, torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=192, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=6, num_key_value_heads=2, vocab_size=1000)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear"))
    before, peak_live = libc.mallinfo2(), 0
    for length in (200, 240, 220, 180):
        ids = torch.randint(0, 1000, (4, length))
        hidden = model.model.model(input_ids=ids).last_hidden_state
        now = libc.mallinfo2()
        peak_live = max(peak_live, now.uordblks + now.hblkhd - before.uordblks - before.hblkhd)
        hidden.sum().backward()
        del hidden
    after = libc.mallinfo2()
    print(json.dumps({"growth": (after.arena + after.hblkhd - before.arena - before.hblkhd) / peak_live}))
    """
)


def heap_growth(env: dict[str, str]) -> float:
    full = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    full.update(PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **env)
    out = subprocess.run(
        [sys.executable, "-c", STEPS], capture_output=True, text=True, env=full, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


@on_cpu_glibc
def test_tuned_heap_stays_close_to_what_is_alive():
    """With the settings, four steps leave a heap no larger than about the most that was alive
    (measured 0.82-1.0x, also under the suite's load). glibc's defaults (2.36 here) left
    1.28-1.97x in six runs: the holes that tensors of the same size cannot reuse. That side
    varies with load and glibc version, so only the tuned bound is asserted; with the tunables
    missing or misspelled it fails."""
    tuned = heap_growth({"GLIBC_TUNABLES": hostmem.TUNABLES})
    assert tuned < 1.2, tuned
