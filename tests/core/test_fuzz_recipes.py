"""Fuzzing recipes: whatever a user writes, `tune validate` ends in success or one paragraph
(exit 2), never a traceback. Mutations of a valid recipe: keys renamed, dropped or added, values
of the wrong type, tables replaced by scalars."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tune.testing import recipe_dict, write_recipe

KEYS = {
    "model": ["path", "max_seq_len", "loader", "quantize", "dtype", "modle"],
    "data": ["format", "train", "pack", "template", "eval_fraction", "streaming", "mix", "source"],
    "optimizer": ["name", "lr", "weight_decay", "betas"],
    "scheduler": ["name", "warmup_steps", "warmup_ratio"],
    "train": ["max_steps", "micro_batch_size", "grad_accum", "precision", "epochs", "seed"],
    "strategy": ["name", "zero_stage"],
    "eval": ["metrics", "max_batches"],
    "adapt": ["method", "r"],
    "objective": ["name", "beta"],
    "modle": ["path"],
}

scalars = st.one_of(
    st.integers(-3, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["tune:tiny-llama", "chat", "adamw", "lora", "deepspeed", "nf4", "bf16"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=2),
)
mutation = st.tuples(
    st.sampled_from(sorted(KEYS)),
    st.integers(0, 7),
    st.sampled_from(["set", "drop", "table"]),
    values,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return root, recipe_dict(root)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_any_recipe_validates_or_fails_in_one_paragraph(base, mutations, capsys):
    from tune.cli import main
    from tune.recipe.toml import dump_toml

    root, recipe = base
    recipe = copy.deepcopy(recipe)
    for table, index, action, value in mutations:
        key = KEYS[table][index % len(KEYS[table])]
        if action == "table":
            recipe[table] = value
        elif action == "drop":
            section = recipe.get(table)
            if isinstance(section, dict):
                section.pop(key, None)
            else:
                recipe.pop(table, None)
        else:
            section = recipe.setdefault(table, {})
            if not isinstance(section, dict):
                recipe[table] = section = {}
            section[key] = value
    try:
        dump_toml(recipe)
    except Exception:  # not expressible as TOML: not something a user can write
        return
    path = write_recipe(root, recipe, "fuzz.toml")
    with pytest.raises(SystemExit) as done:
        main(["validate", str(path)])
    said = capsys.readouterr()
    assert done.value.code in (0, 2, None), said.err
    assert "Traceback" not in said.err
    if done.value.code == 2:
        assert "error:" in said.err
