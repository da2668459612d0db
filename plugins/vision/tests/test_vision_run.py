"""A vision run end to end on the tiny Qwen2-VL-shaped model: trains, scores, saves a final/
that transformers reopens with its processor, merges, chats about an image, previews."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.testing import run_cli, write_recipe

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_run_scores_saves_merges_and_chats_with_an_image(tmp_path, vision_recipe_of, run_recipe):
    recipe = vision_recipe_of(
        n_train=16,
        n_eval=8,
        train={"max_steps": 3},
        eval={"metrics": ["vision_perplexity", "answer_accuracy"]},
    )
    summary, _ = run_recipe(recipe)
    scores = summary["eval"]
    assert 0.0 <= scores["answer_accuracy"] <= 1.0 and scores["eval_loss"] > 0
    final = tmp_path / "run" / "final"
    assert (final / "preprocessor_config.json").is_file()
    assert (final / "chat_template.jinja").is_file()

    merged = tmp_path / "merged"
    out = run_cli("merge", str(tmp_path / "run"), "--out", str(merged), "--dtype", "fp32")
    assert out.returncode == 0, out.stderr[-2000:]
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from tune_plugin_vision.processors import load_processor

    model = AutoModelForImageTextToText.from_pretrained(str(merged))
    processor = load_processor(str(merged))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.open(tmp_path / "shapes/images/eval-0000.png")
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]

    image_path = str(tmp_path / "shapes/images/eval-0001.png")
    asked = run_cli(
        "chat",
        str(tmp_path / "run"),
        "--image",
        image_path,
        "--prompt",
        "What colour?",
        "--max-new-tokens",
        "3",
    )
    assert asked.returncode == 0, asked.stderr[-2000:]


def test_preview_shows_image_tokens_once_with_their_count(tmp_path, vision_recipe_of):
    path = write_recipe(tmp_path, vision_recipe_of(n_train=2, n_eval=0))
    out = run_cli("data", "preview", str(path), "-n", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<|image_pad|>x4" in out.stdout and "trained" in out.stdout


def test_rows_in_every_layout_give_the_same_record(tmp_path):
    """OpenAI parts (path, data URI), LLaMA-Factory placeholders and a Hub PIL column."""
    import base64

    from PIL import Image
    from tune_plugin_vision.fmt import VisionChat, VisionChatSettings

    Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    reply = {"role": "assistant", "content": "red"}

    def user(*parts):
        return {"messages": [{"role": "user", "content": list(parts)}, reply]}

    text = {"type": "text", "text": "colour?"}
    rows = [
        user({"type": "image", "image": "a.png"}, text),
        user({"type": "image_url", "image_url": {"url": uri}}, text),
        {"messages": [{"role": "user", "content": "<image>colour?"}, reply], "images": ["a.png"]},
        {
            "messages": [{"role": "user", "content": [{"type": "image"}, text]}, reply],
            "images": [Image.open(tmp_path / "a.png")],
        },
    ]
    fmt = VisionChat(VisionChatSettings(), None, bases=[tmp_path], max_seq_len=64, where="t")
    records = [fmt.check(row, f"row {i}") for i, row in enumerate(rows)]
    first = records[0]
    assert first.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "colour?"}]
    for record in records[1:]:
        assert record.messages == first.messages
        assert len(record.images) == 1
    assert records[1].images[0].data == data and records[2].images[0].data == data


def test_cache_key_follows_the_image_bytes(tmp_path):
    from PIL import Image
    from tune_plugin_vision.fmt import VisionChat, VisionChatSettings

    Image.new("RGB", (28, 28), (0, 0, 200)).save(tmp_path / "a.png")
    train = tmp_path / "train.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "<image>?"},
            {"role": "assistant", "content": "blue"},
        ],
        "images": ["a.png"],
    }
    train.write_text(json.dumps(row) + "\n")

    def key():
        fmt = VisionChat(
            VisionChatSettings(), None, bases=[tmp_path], specs=[train], max_seq_len=64, where="t"
        )
        return fmt.cache_key()

    before = key()
    Image.new("RGB", (28, 28), (0, 200, 0)).save(tmp_path / "a.png")  # same rows, new pixels
    assert key() != before
    assert Path(train).read_text() == json.dumps(row) + "\n"


def test_images_from_a_saved_hub_dataset_column(tmp_path, vision_recipe_of):
    """A datasets folder whose `images` column holds PIL images (as Hub datasets do)."""
    from datasets import Dataset
    from PIL import Image
    from tune.testing import load_recipe, tokenize

    rows = {
        "messages": [
            [{"role": "user", "content": "<image>colour?"}, {"role": "assistant", "content": c}]
            for c in ("red", "blue")
        ],
        "images": [
            [Image.new("RGB", (56, 56), (255, 0, 0))],
            [Image.new("RGB", (56, 56), (0, 0, 255))],
        ],
    }
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    recipe = vision_recipe_of(n_train=2, n_eval=0, data={"train": str(tmp_path / "ds")})
    examples = tokenize(load_recipe(write_recipe(tmp_path, recipe))).train
    assert len(examples) == 2
    assert all(e["mm_names"] == ["pixel_values", "image_grid_thw"] for e in examples)


def test_freeze_defaults_and_max_pixels(tmp_path, vision_recipe_of):
    """A full fine-tune trains the language model only by default (vision tower and projector
    frozen, as LLaMA-Factory); max_pixels scales a large image down before the processor."""
    from PIL import Image
    from tune.testing import build_model, load_recipe, tokenize
    from tune_plugin_vision.loader import part_of

    recipe = vision_recipe_of(n_train=2, n_eval=0, adapt=[], data={"max_pixels": 3136})
    loaded = load_recipe(write_recipe(tmp_path, recipe))
    model, _ = build_model(loaded)
    parts = {part_of(n) for n, p in model.named_parameters() if p.requires_grad}
    frozen = {part_of(n) for n, p in model.named_parameters() if not p.requires_grad}
    assert parts == {"language"} and frozen == {"vision", "projector"}

    first = json.loads(Path(recipe["data"]["train"]).read_text().splitlines()[0])
    image = Path(recipe["data"]["train"]).parent / first["images"][0]
    Image.new("RGB", (112, 112), (10, 200, 10)).save(image)  # 4x the pixels of the others
    examples = tokenize(loaded).train
    assert len({tuple(e["mm_shapes"][0]) for e in examples}) == 1  # scaled to 56 x 56


def test_estimate_counts_the_language_model_and_the_frozen_vision_parts_exactly(tmp_path):
    """`tune estimate` on a vision run: the loader's ModelConfig gives the language model's
    config and the vision tower + projector beside it; the counts equal the built model's."""
    from tune.testing import build_model, load_recipe
    from tune_plugin_vision.loader import part_of

    recipe_path = REPO / "recipes/quickstart-vision.toml"
    res = run_cli("estimate", str(recipe_path), "--json")
    counted = json.loads(res.stdout)["parameters"]
    model, _ = build_model(load_recipe(recipe_path), tmp_path)
    params = dict(model.named_parameters())
    assert counted["total"] == sum(p.numel() for p in params.values())
    language = sum(p.numel() for n, p in params.items() if part_of(n) == "language")
    assert counted["trainable"] == language == counted["total"] - counted["beside_decoder"]
    assert counted["beside_decoder"] > 0
