"""`[model] rope_scaling`: checked against the model's config, applied through the loader."""

from __future__ import annotations

import copy

import pytest
import torch
from tune.errors import TuneError
from tune.model.checks import validate_model
from tune.testing import build_model, load_recipe, recipe_dict, run_cli, write_recipe

HALF = 16  # tiny models: head_dim 32, so 16 rotary frequencies
SCALINGS = {
    "linear": {"type": "linear", "factor": 4},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"type": "yarn", "factor": 4},
    "llama3": {
        "type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4096,
    },
    "longrope": {
        "type": "longrope",
        "factor": 4.0,
        "short_factor": [1.0] * HALF,
        "long_factor": [1.0 + i / 4 for i in range(HALF)],
    },
}


def recipe_with(tmp_path, scaling, max_seq_len=16384, arch="tiny-llama"):
    data = recipe_dict(
        tmp_path,
        model={"path": f"tune:{arch}", "max_seq_len": max_seq_len, "rope_scaling": scaling},
    )
    return load_recipe(write_recipe(tmp_path, data))


def logits_far_out(model) -> torch.Tensor:
    """Logits at positions past the tiny models' 4,096, where every scaling is in effect."""
    ids = torch.randint(5, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(6000, 6012).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions).logits


@pytest.fixture(scope="module")
def unscaled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unscaled")
    model, _ = build_model(load_recipe(write_recipe(tmp, recipe_dict(tmp))), tmp)
    return logits_far_out(model)


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_each_type_configures_the_model(tmp_path, kind, unscaled):
    recipe = recipe_with(tmp_path, SCALINGS[kind])
    validate_model(recipe)
    model, _ = build_model(recipe, tmp_path)
    rope = model.config.rope_parameters
    assert rope["rope_type"] == kind and rope["factor"] == SCALINGS[kind]["factor"]
    assert rope["rope_theta"] == 10000.0  # the model's own base is kept
    # dynamic reads max_position_embeddings as the original length and scales past it
    assert model.config.max_position_embeddings == (4096 if kind == "dynamic" else 16384)
    if kind in ("yarn", "longrope", "llama3"):
        assert rope["original_max_position_embeddings"] == 4096
    assert (logits_far_out(model) - unscaled).abs().max() > 1e-5
    # a model saved with this scaling (a full fine-tune's final/, merged) is left as it is
    from tune.builtin.loader import apply_rope_scaling

    again = apply_rope_scaling(copy.deepcopy(model.config), recipe)
    assert again.to_dict() == model.config.to_dict()


@pytest.mark.parametrize(
    ("scaling", "said"),
    [
        ({"type": "yarm", "factor": 4}, "Did you mean 'yarn'"),
        ({"factor": 4}, "names no type"),
        ({"type": "linear", "factor": 1.0}, "factor = 1.0"),
        ({"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 4096}, "lacks "),
        ({"type": "yarn", "factor": 4, "betta_fast": 32}, "Did you mean 'beta_fast'"),
        ({**SCALINGS["longrope"], "long_factor": [1.0] * 3}, "list of 16 positive numbers"),
    ],
)
def test_bad_tables_are_one_paragraph(tmp_path, scaling, said):
    with pytest.raises(TuneError) as err:
        validate_model(recipe_with(tmp_path, scaling))
    text = str(err.value)
    assert "[model] rope_scaling" in text and said in text and "Fix:" in text
    assert "\n" not in text


def test_max_seq_len_beyond_the_reach(tmp_path):
    with pytest.raises(TuneError, match=r"\[model\] max_seq_len.*16,384 positions"):
        validate_model(recipe_with(tmp_path, {"type": "linear", "factor": 4}, 20000))


def test_the_cli_refuses_with_exit_2(tmp_path):
    data = recipe_dict(
        tmp_path, model={"path": "tune:tiny-qwen2", "rope_scaling": {"type": "yarn", "factor": 0.5}}
    )
    res = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert res.returncode == 2, res.stderr
    out = res.stdout + res.stderr
    assert "[model] rope_scaling" in out and "Traceback" not in out
