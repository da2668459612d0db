"""User mistakes in vision data are one paragraph naming the row and the file, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.plugin import TuneError
from tune.testing import load_recipe, run_cli, tiny_model, tokenize, write_recipe


def _validate(path: Path) -> None:
    """Every row read and checked (then tokenized) as a run does."""
    tokenize(load_recipe(path))


def _rewrite(recipe: dict, change) -> Path:
    """The recipe's train file with its first row changed by `change(row, folder)`."""
    train = Path(recipe["data"]["train"])
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    change(rows[0], train.parent)
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return train


def _message(exc: pytest.ExceptionInfo) -> str:
    return " ".join(str(exc.value).split())


def test_missing_image_names_row_and_file(tmp_path, vision_recipe_of):
    recipe = vision_recipe_of(n_train=4, n_eval=0)
    _rewrite(recipe, lambda row, _: row.update(images=["images/nowhere.png"]))
    path = write_recipe(tmp_path, recipe)
    res = run_cli("validate", str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "image file not found: 'images/nowhere.png'" in text
    assert "train.jsonl" in text and "Traceback" not in text


def test_corrupt_png_names_row_and_file(tmp_path, vision_recipe_of):
    recipe = vision_recipe_of(n_train=4, n_eval=0)

    def damage(row, folder):
        image = folder / row["images"][0]
        image.write_bytes(image.read_bytes()[:40])  # a truncated PNG

    _rewrite(recipe, damage)
    with pytest.raises(TuneError) as exc:
        _validate(write_recipe(tmp_path, recipe))
    text = _message(exc)
    assert "cannot be read" in text and ".png" in text and "train.jsonl" in text


def test_placeholder_count_must_match_images(tmp_path, vision_recipe_of):
    recipe = vision_recipe_of(n_train=4, n_eval=0)
    _rewrite(recipe, lambda row, _: row["images"].append(row["images"][0]))
    with pytest.raises(TuneError) as exc:
        _validate(write_recipe(tmp_path, recipe))
    text = _message(exc)
    assert "1 image placeholder(s)" in text and "2 image(s)" in text and "train.jsonl" in text


def test_image_rows_for_a_text_only_tokenizer(tmp_path, vision_recipe_of):
    model = {"loader": "transformers", "path": "tune:tiny-llama"}
    recipe = vision_recipe_of(n_train=4, n_eval=0, model=model)
    with pytest.raises(TuneError) as exc:
        tokenize(load_recipe(write_recipe(tmp_path, recipe)))
    assert "has no image processor" in _message(exc)


def test_text_only_model_for_the_vision_loader(tmp_path, vision_recipe_of):
    folder = tiny_model("tiny-llama")
    recipe = vision_recipe_of(n_train=4, n_eval=0, model={"path": str(folder)})
    with pytest.raises(TuneError) as exc:
        tokenize(load_recipe(write_recipe(tmp_path, recipe)))
    text = _message(exc)
    assert "'llama' model, which reads no images" in text and "[model] path" in text
