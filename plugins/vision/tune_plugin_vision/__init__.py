"""tune plugin `vision`: vision-language fine-tuning on the public plugin API.

- loader `vision`: image-text-to-text models (`AutoModelForImageTextToText` + `AutoProcessor`),
  hub ids, local folders, or the offline `tune:tiny-qwen2-vl`, `tune:tiny-qwen2.5-vl`, `tune:tiny-llava`; `freeze`
  parts of a full fine-tune (vision tower, projector, language model).
- data format `vision_chat`: OpenAI content parts or LLaMA-Factory's messages + images with
  `<image>` placeholders; images from files, data URIs or a dataset's image column.
- objective `vision_lm` (padded and packed micro-batches with pixel tensors) and the metrics
  `vision_perplexity` and `answer_accuracy`.

Only `tune.plugin` is imported from tune; torch and transformers are imported inside hooks.
"""

from __future__ import annotations

from pathlib import Path

from tune.plugin import hookimpl

from .fmt import VisionChat, VisionChatSettings
from .loader import VisionLoaderSettings
from .memory import loader_estimate
from .objective import CAPABILITIES, EXAMPLES, VisionLM

TUNE_API = ">=2,<3"
METRICS = ("vision_perplexity", "answer_accuracy")


@hookimpl
def tune_provide(provide):
    from tune.plugin import Capabilities

    provide.loader(
        "vision",
        VisionLoaderSettings,
        doc="AutoModelForImageTextToText + AutoProcessor (hub id, local dir, tune:tiny-qwen2-vl)",
        requires=("PIL",),
        estimate=loader_estimate,
    )
    provide.data_format(
        "vision_chat",
        VisionChatSettings,
        doc="conversations with images: OpenAI content parts, or messages + images (<image>)",
        examples=EXAMPLES,
        requires=("PIL",),
    )
    provide.objective(
        "vision_lm",
        doc="next-token loss of vision-language examples (pixel tensors collated)",
        build=VisionLM,
        examples=EXAMPLES,
        capabilities=CAPABILITIES,
    )
    for name, doc in zip(
        METRICS,
        ("eval_loss and perplexity of vision examples", "share of replies greedy decoding gets"),
        strict=True,
    ):
        provide.metric(name, doc=doc, capabilities=Capabilities(scores=(EXAMPLES,)))


@hookimpl
def tune_load_model(name, settings, ctx, want):
    if name != "vision":
        return None
    from .loader import load

    return load(settings, ctx, want)


@hookimpl
def tune_format_data(name, settings, tokenizer, ctx):
    if name != "vision_chat":
        return None
    recipe = ctx.recipe
    folder = Path(recipe.path).parent
    data = recipe.data
    specs, bases = [], []
    if settings.image_dir:
        bases.append((folder / Path(settings.image_dir).expanduser()).resolve())
    if data.source.name == "files":
        for spec in [*data.train_files, *data.eval_files]:
            for option in (Path(spec).expanduser(), folder / spec, Path.cwd() / spec):
                if option.is_file():
                    specs.append(option)
                    bases.append(option.parent)
                    break
    bases += [folder, Path.cwd()]
    loader = recipe.selected("loader")
    model = None
    if loader is not None and loader.backend.plugin == "vision":
        model = (loader.settings, str(recipe.model.path), Path(recipe.path))
    return VisionChat(
        settings,
        tokenizer,
        bases=list(dict.fromkeys(bases)),
        specs=specs,
        model=model,
        max_seq_len=recipe.model.max_seq_len,
        where=f"{recipe.path}: [data]",
    )


@hookimpl
def tune_evaluate(names, model, data, ctx):
    wanted = [n for n in names if n in METRICS]
    if not wanted:
        return None
    from .metrics import evaluate

    return evaluate(wanted, model, data)


@hookimpl
def tune_save_extras(model, path, ctx):
    """A vision run's final/ (and `tune merge` output) gets the image processor's config and
    the chat template, so transformers' AutoProcessor opens it as it opens the base."""
    selected = ctx.recipe.selected("loader")
    if selected is None or selected.backend.plugin != "vision":
        return
    if not (Path(path) / "tokenizer_config.json").exists():
        return
    from .loader import load_processor_for, resolve_path
    from .processors import save_processor

    tokenizer = load_processor_for(resolve_path(selected.settings, ctx), selected.settings)
    save_processor(tokenizer.image_text_processor, Path(path))
