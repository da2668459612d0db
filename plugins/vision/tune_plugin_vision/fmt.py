"""Data format `vision_chat`: a conversation with images, rendered through the processor's chat
template; only assistant replies are trained (image tokens never).

A row is checked without torch (`rows.normalize`). Encoding renders the conversation to text
(one placeholder per image), locates the assistant replies in that text, tokenizes it, then runs
the processor on the same text with the images, which expands each placeholder into the image's
tokens and gives the pixel tensors. The labels found on the plain tokens are carried over to the
processor's tokens by aligning the two sequences (the expansion only inserts tokens), so every
image token is untrained. An example holds, besides `input_ids` and `labels`, the processor's
other outputs: per-token ones (e.g. `mm_token_type_ids`) as lists, the others (pixel values,
image grids) as raw bytes with their shape and dtype.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tune.plugin import IGNORE, DataFormat, Settings, TuneError, chat, files

from .rows import Record, image_refs, normalize

# Processor outputs the model does not take (or that the collator rebuilds).
SKIP = {"input_ids", "attention_mask", "labels", "offset_mapping"}


class VisionChatSettings(Settings):
    messages_field: str | None = Field(None, description="None = messages or conversations")
    images_field: str = Field("images", description="the row's image list (LLaMA-Factory layout)")
    placeholder: str = Field("<image>", description="marks an image's place in the text")
    image_dir: str | None = Field(None, description="folder of relative image paths")
    max_pixels: int | None = Field(
        None, gt=0, description="larger images are scaled down to this many pixels"
    )
    min_pixels: int | None = Field(
        None, gt=0, description="smaller images are scaled up to this many pixels"
    )
    max_images: int = Field(8, ge=1, description="images a row may hold")
    train_on_prompt: bool = False
    system_prompt: str | None = None
    truncation: Literal["truncate", "drop"] = Field(
        "truncate",
        description="an example longer than max_seq_len: cut after its last image, or dropped",
    )


class VisionChat(DataFormat):
    chat = True

    def __init__(self, settings, tokenizer=None, *, bases=(), specs=(), model=None, **kwargs):
        super().__init__(settings, tokenizer, **kwargs)
        # (loader settings, [model] path, recipe path) when the loader is `vision`: where the
        # processor comes from when the tokenizer was loaded alone (tune chat on a run folder)
        self.model = model
        self.bases = [Path(b) for b in bases]
        self.specs = list(specs)  # local data files: their images enter the cache key

    # -- rows -------------------------------------------------------------------------------------
    def check(self, row, where):
        return normalize(row, self.settings, self.bases, where)

    @property
    def processor(self) -> Any:
        processor = getattr(self.tokenizer, "image_text_processor", None)
        if processor is None and self.model is not None and self.tokenizer is not None:
            from .loader import load_processor_for, model_folder

            settings, path, recipe_path = self.model
            processor = load_processor_for(model_folder(settings, path, recipe_path), settings)
            processor = processor.image_text_processor
            processor.tokenizer = self.tokenizer  # the run's own (its trained template)
            self.tokenizer.image_text_processor = processor
        if processor is None:
            raise TuneError(
                "this data holds images, and the model's tokenizer has no image processor: "
                "the model loaded is text-only or was loaded as one.",
                where=f"{self.where} format",
                fix='load an image-text-to-text model with [model] loader = "vision" (e.g. '
                'path = "tune:tiny-qwen2-vl" offline), or train text rows with format = "chat".',
            )
        return processor

    def encode(self, record: Record, where: str) -> list[dict[str, Any]]:
        processor = self.processor
        images = [self._image(image.data, image.name, where) for image in record.images]
        text, spans = chat.assistant_spans(processor, record.messages, where)
        tokenizer = processor.tokenizer
        plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        labels0 = _span_labels(plain["input_ids"], plain["offset_mapping"], spans)
        if self.settings.train_on_prompt:
            labels0 = list(plain["input_ids"])
        out = processor(
            text=[text],
            images=images or None,
            return_tensors="np",
            add_special_tokens=False,
        )
        ids = [int(t) for t in out["input_ids"][0]]
        labels = _carry_labels(plain["input_ids"], labels0, ids)
        image_id = image_token_id(processor)
        labels = [IGNORE if t == image_id else lab for t, lab in zip(ids, labels, strict=True)]
        if labels:
            labels[0] = IGNORE
        example: dict[str, Any] = {"input_ids": ids, "labels": labels}
        names, shapes, dtypes, blobs = [], [], [], []
        for key, value in out.items():
            if key in SKIP:
                continue
            if value.ndim == 2 and value.shape == (1, len(ids)) and value.dtype.kind in "iub":
                example[key] = [int(v) for v in value[0]]  # per token: padded in collate
                continue
            names.append(key)
            shapes.append(list(value.shape))
            dtypes.append(str(value.dtype))
            blobs.append(value.tobytes())
        example.update(mm_names=names, mm_shapes=shapes, mm_dtypes=dtypes, mm_bytes=blobs)
        example["image_sha"] = hashlib.sha256(
            b"".join(bytes.fromhex(i.digest) for i in record.images)
        ).hexdigest()
        return self._fit(example, image_id)

    def _fit(self, example: dict[str, Any], image_id: int | None) -> list[dict[str, Any]]:
        """max_seq_len: a tail after the last image token is cut ("truncate"); an example whose
        images reach past it is dropped (its image tokens must stay whole)."""
        n = len(example["input_ids"])
        if n > self.max_seq_len:
            last_image = max(
                (i for i, t in enumerate(example["input_ids"]) if t == image_id), default=-1
            )
            if self.settings.truncation == "drop" or last_image >= self.max_seq_len - 1:
                self.counts["dropped"] += 1
                return []
            for key, value in list(example.items()):
                if isinstance(value, list) and len(value) == n:
                    example[key] = value[: self.max_seq_len]
            self.counts["truncated"] += 1
        if not any(label != IGNORE for label in example["labels"][1:]):
            self.counts["dropped"] += 1
            return []
        return [example]

    def _image(self, data: bytes, name: str, where: str) -> Any:
        """The image as RGB, scaled into [min_pixels, max_pixels] (aspect ratio kept)."""
        from PIL import Image

        from .rows import Image as RowImage
        from .rows import verify

        verify(RowImage(data, name), where)
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        s = self.settings
        scale = 1.0
        if s.max_pixels and w * h > s.max_pixels:
            scale = math.sqrt(s.max_pixels / (w * h))
        elif s.min_pixels and w * h < s.min_pixels:
            scale = math.sqrt(s.min_pixels / (w * h))
        if scale != 1.0:
            size = (max(1, int(w * scale)), max(1, int(h * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
            self.counts["images_resized"] += 1
        return image

    # -- what else the core asks ------------------------------------------------------------------
    def cache_key(self) -> Any:
        """Settings, the image processor's config, and the bytes of every image the local data
        files name (a changed image file changes the examples although the rows did not)."""
        key: dict[str, Any] = {"settings": self.settings.model_dump(mode="json")}
        processor = getattr(self.tokenizer, "image_text_processor", None)
        if processor is not None:
            key["image_processor"] = processor.image_processor.to_json_string()
        digest = hashlib.sha256()
        for spec in self.specs:
            for _, row in files.iter_rows(spec):
                for ref in image_refs(row, self.settings):
                    digest.update(_ref_digest(ref, self.bases).encode())
        key["images"] = digest.hexdigest()
        return key

    def prompt_inputs(self, messages: list[dict[str, Any]], images: list[str]) -> Any:
        """`tune chat --image`: the conversation with the images shown in its first user turn,
        rendered and processed as training did, as tensors for `generate`."""
        from .rows import _image_bytes, verify

        shown = []
        for name in images:
            where = f"--image {name}"
            image = _image_bytes(str(name), [Path.cwd()], where)
            verify(image, where)
            shown.append(self._image(image.data, image.name, where))
        parts = []
        first = True
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}] if content else []
            if first and message["role"] == "user":
                content = [{"type": "image"} for _ in shown] + content
                first = False
            parts.append({"role": message["role"], "content": content})
        processor = self.processor
        text = chat.render(processor, parts, True, "tune chat")
        return dict(
            processor(
                text=[text], images=shown or None, return_tensors="pt", add_special_tokens=False
            )
        )

    def render_prompt(self, text: str) -> str:
        from tune.plugin import chat

        return chat.user_prompt(self.tokenizer, text, self.settings.system_prompt)


def image_token_id(processor: Any) -> int | None:
    value = getattr(processor, "image_token_id", None)
    if value is None and getattr(processor, "image_token", None):
        value = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return value


def _ref_digest(ref: Any, bases: list[Path]) -> str:
    if isinstance(ref, str) and not ref.startswith("data:"):
        path = Path(ref.removeprefix("file://")).expanduser()
        for option in [path] if path.is_absolute() else [b / path for b in bases]:
            if option.is_file():
                return files.file_digest(option)
    return hashlib.sha256(repr(ref).encode()).hexdigest()


def _span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list) -> list[int]:
    """Labels of the plain tokens: the token's id inside an assistant reply, else IGNORE."""
    labels = [IGNORE] * len(ids)
    k = 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and start >= spans[k][0] and end <= spans[k][1] and end > start:
            labels[i] = ids[i]
    return labels


def _carry_labels(plain: list[int], labels: list[int], expanded: list[int]) -> list[int]:
    """Labels for the processor's tokens: tokens matched with a plain token keep its label,
    the tokens the processor inserted (an image's) get IGNORE."""
    out = [IGNORE] * len(expanded)
    matcher = difflib.SequenceMatcher(None, plain, expanded, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        out[b : b + size] = labels[a : a + size]
    return out
