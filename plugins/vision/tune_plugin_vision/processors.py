"""The processor of an image-text-to-text model: `AutoProcessor`, or, where a part it would
build cannot be (a video processor needs torchvision, which image training never uses), the
family's own processor class built from its image processor and tokenizer with no video part."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_processor(path: str, **kwargs: Any) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except ImportError as exc:
        if "orchvision" not in str(exc):
            raise
    return images_only(path, **kwargs)


def images_only(path: str, **kwargs: Any) -> Any:
    """The family's processor without its video processor (built from the folder's parts)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    config = AutoConfig.from_pretrained(path, **kwargs)
    family = PROCESSOR_MAPPING[type(config)]

    class ImagesOnly(family):  # type: ignore[misc, valid-type]
        """`family` with its video slot left empty."""

        @classmethod
        def get_attributes(cls) -> list[str]:
            return family.get_attributes()

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def __reduce__(self) -> Any:  # a class made here: pickled as how to build it again
            return images_only, (path,), None, None, None

    ImagesOnly.__name__ = family.__name__
    image = AutoImageProcessor.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    template = Path(path) / "chat_template.jinja"
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
    parts = {"image_processor": image, "tokenizer": tokenizer}
    parts.update({name: None for name in family.get_attributes() if name not in parts})
    processor = ImagesOnly(**parts, chat_template=chat_template or tokenizer.chat_template)
    return processor


def save_processor(processor: Any, path: Path) -> None:
    """The image processor's config and the chat template beside a saved tokenizer, so plain
    transformers rebuilds the processor from the folder."""
    processor.image_processor.save_pretrained(str(path))
    template = processor.chat_template
    if isinstance(template, str):
        (Path(path) / "chat_template.jinja").write_text(template, encoding="utf-8")
