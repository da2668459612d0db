"""Liger plugin: honest about needing a GPU (STATUS, refusal at validation), and the real
kernels on a GPU (marked `gpu`)."""

from __future__ import annotations

import json

import pytest
import tune_plugin_liger
from tune.plugin import Capabilities, Settings, TuneError, hookimpl
from tune.testing import load_recipe, recipe_dict, run_cli, write_recipe
from tune_plugin_liger import (
    LigerSettings,
    capabilities,
    gpu_present,
    patch_kwargs,
    why_not_here,
)

no_gpu = pytest.mark.skipif(gpu_present(), reason="checks the no-GPU behaviour")
LIGER = [{"method": "liger"}, {"method": "lora", "r": 4}]


@no_gpu
def test_plugins_list_says_it_needs_a_gpu():
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert rows["liger"]["status"].startswith("needs a CUDA GPU")
    assert "adapter:liger" in rows["liger"]["provides"]


@no_gpu
def test_a_recipe_with_liger_is_refused_at_validation_in_one_paragraph(tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(tmp_path, 8, adapt=LIGER))
    res = run_cli("validate", str(recipe))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    error = res.stderr.strip()
    assert error.count("error:") == 1 and "\n\n" not in error, error
    assert "method = 'liger' cannot run here: needs a CUDA GPU" in error
    assert "chunked_loss" in error  # the way out on this machine


def test_without_liger_the_same_recipe_validates(tmp_path):
    recipe = write_recipe(tmp_path, recipe_dict(tmp_path, 8, adapt=LIGER[1:]))
    assert run_cli("validate", str(recipe)).returncode == 0


# The kernel names the unsloth loader declares it replaces (tune-plugin-unsloth's KERNELS).
UNSLOTH_KERNELS = ("rms_norm", "rope", "swiglu", "cross_entropy")


def test_liger_declares_a_cuda_device_and_the_kernels_it_patches():
    caps = capabilities(LigerSettings())
    assert caps.devices == ("cuda",)
    assert caps.replaces_kernels == UNSLOTH_KERNELS  # the same names: the core compares them
    assert caps.why["devices"] and caps.why["replaces_kernels"]
    fewer = capabilities(LigerSettings(rope=False, fused_linear_cross_entropy=False))
    assert fewer.replaces_kernels == ("rms_norm", "swiglu")


class KernelLoader:
    """Loader `kernels`: declares that it replaces Unsloth's kernels (as the unsloth loader
    does); it never loads anything, the recipe is refused at validation."""

    class LoaderSettings(Settings):
        trust_remote_code: bool = False

    @hookimpl
    def tune_provide(self, provide):
        provide.loader(
            "kernels",
            self.LoaderSettings,
            doc="a loader that swaps Unsloth's kernels in",
            capabilities=Capabilities(replaces_kernels=UNSLOTH_KERNELS),
        )

    @hookimpl
    def tune_load_model(self, name, settings, ctx, want):
        raise AssertionError("validation only")


@pytest.mark.gpu
def test_liger_beside_a_loader_that_replaces_the_same_kernels_is_refused(
    tmp_path, monkeypatch, tune_plugin
):
    """The unsloth loader declares these kernels; the core refuses the pair before loading
    (a CUDA device must be visible: without one liger is refused for that first)."""
    monkeypatch.setattr(tune_plugin_liger, "why_not_here", lambda: None)
    tune_plugin(KernelLoader(), "kernels")
    data = recipe_dict(tmp_path, 8, adapt=LIGER)
    data["model"]["loader"] = "kernels"
    with pytest.raises(TuneError, match="both replace the model's cross_entropy, rms_norm"):
        load_recipe(write_recipe(tmp_path, data))


def test_settings_map_onto_ligers_api():
    kwargs = patch_kwargs(LigerSettings(swiglu=False))
    assert kwargs == {
        "rms_norm": True,
        "rope": True,
        "swiglu": False,
        "fused_linear_cross_entropy": True,
        "cross_entropy": False,
    }


def test_an_unsupported_architecture_is_a_user_error():
    class Ctx:
        class recipe:
            path = "recipe.toml"

    class Model:
        class config:
            model_type = "gpt2"

    with pytest.raises(TuneError, match="supports llama, mistral, qwen2"):
        tune_plugin_liger.tune_adapt_model("liger", LigerSettings(), Model(), Ctx())


@pytest.mark.gpu
@pytest.mark.skipif(why_not_here() is not None, reason="needs a CUDA GPU and liger-kernel")
def test_liger_trains_the_tiny_model_with_the_plain_losses(tmp_path, run_recipe):
    from tune.testing import train_losses

    losses = []
    for adapt in (LIGER, LIGER[1:]):
        out = tmp_path / f"run-{len(adapt)}"
        recipe = recipe_dict(
            tmp_path, 16, adapt=adapt, train={"output_dir": str(out), "max_steps": 2}
        )
        run_recipe(recipe, name=f"r{len(adapt)}.toml")
        losses.append(train_losses(out))
    assert max(abs(a - b) for a, b in zip(*losses, strict=True)) < 1e-3
