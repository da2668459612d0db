"""Rows of `vision_chat` checked and normalized without torch (`tune validate` runs this on
every row): messages with OpenAI-style content parts, or LLaMA-Factory's `messages` + `images`
with `<image>` placeholders in the text; images as local paths, data URIs, bytes or PIL images
(a Hub dataset's image column). The result is a record of messages whose content is a list of
text and image parts, and the row's images in order, each as its bytes and where it came from.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.plugin import TuneError, chat


@dataclass
class Image:
    """One image of a row: its bytes (read at check time) and a name for messages."""

    data: bytes
    name: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Record:
    messages: list[dict[str, Any]]
    images: list[Image] = field(default_factory=list)


def _image_bytes(value: Any, bases: list[Path], where: str) -> Image:
    """The bytes of one image reference; a missing file is one paragraph naming it."""
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image (Hub datasets)
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return Image(buffer.getvalue(), "the row's PIL image")
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image(bytes(value["bytes"]), value.get("path") or "the row's image bytes")
        if value.get("path"):
            return _image_bytes(value["path"], bases, where)
        if "url" in value:  # {"url": ...} of an image_url part
            return _image_bytes(value["url"], bases, where)
    if isinstance(value, bytes | bytearray):
        return Image(bytes(value), "the row's image bytes")
    if not isinstance(value, str) or not value:
        raise TuneError(
            f"an image must be a file path, a data URI, bytes or a PIL image, not "
            f"{type(value).__name__} {str(value)[:60]!r}.",
            where=where,
            fix="give each image as a path (relative to the data file's folder) or a data URI.",
        )
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if ";base64" not in head or not payload:
            raise TuneError(
                "an image data URI must be base64-encoded (data:image/png;base64,...).",
                where=where,
                fix="encode the image bytes with base64.",
            )
        try:
            return Image(base64.b64decode(payload, validate=True), "the row's data URI image")
        except ValueError:
            raise TuneError(
                "an image data URI holds invalid base64.",
                where=where,
                fix="encode the image bytes with base64 (no line breaks).",
            ) from None
    if value.startswith(("http://", "https://")):
        raise TuneError(
            f"image '{value[:80]}' is a URL; training reads no images from the network.",
            where=where,
            fix="download the images and give their local paths.",
        )
    path = Path(value.removeprefix("file://")).expanduser()
    tried = [path] if path.is_absolute() else [b / path for b in bases]
    for option in tried:
        if option.is_file():
            return Image(option.read_bytes(), str(option))
    looked = ", ".join(str(t) for t in dict.fromkeys(tried))
    raise TuneError(
        f"image file not found: '{value}' (looked in {looked}).",
        where=where,
        fix="check the path: relative image paths are read from [data] image_dir, else from the "
        "data file's folder, the recipe's folder and the current directory.",
    )


def _parts(content: Any, placeholder: str, where: str, what: str) -> tuple[list[dict], list]:
    """Content as a list of text / image parts; the image references found inline."""
    inline: list[Any] = []
    if isinstance(content, str):
        pieces = content.split(placeholder) if placeholder else [content]
        parts: list[dict[str, Any]] = []
        for i, text in enumerate(pieces):
            if i:
                parts.append({"type": "image"})
                inline.append(None)  # taken from the row's image list
            if text:
                parts.append({"type": "text", "text": text})
        return parts, inline
    if not isinstance(content, list):
        raise TuneError(
            f"{what} content must be text or a list of content parts, not "
            f"{type(content).__name__}.",
            where=where,
            fix='use {"type": "text", "text": ...} and {"type": "image", "image": PATH} parts.',
        )
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            sub, refs = _parts(str(part.get("text") or ""), placeholder, where, what)
            parts += sub
            inline += refs
        elif kind in ("image", "image_url"):
            ref = part.get("image") if kind == "image" else part.get("image_url")
            if isinstance(ref, dict) and kind == "image_url":
                ref = ref.get("url")
            parts.append({"type": "image"})
            inline.append(ref)  # None: the row's image list supplies it
        else:
            raise TuneError(
                f"{what} has a content part of type {kind!r}; vision_chat reads 'text', 'image' "
                "and 'image_url' parts.",
                where=where,
                fix="drop or convert the other parts (video and audio are not trained).",
            )
    return parts, inline


def normalize(row: dict[str, Any], settings: Any, bases: list[Path], where: str) -> Record:
    field_name = settings.messages_field or next(
        (f for f in ("messages", "conversations") if f in row), "messages"
    )
    chat.need(row, [field_name], where, "vision_chat")
    turns = row[field_name]
    if not isinstance(turns, list) or not turns:
        raise TuneError(
            f"'{field_name}' must be a non-empty list of turns.",
            where=where,
            fix="give the conversation as a list of {role, content} turns.",
        )
    listed = row.get(settings.images_field)
    if listed is None:
        listed = []
    elif not isinstance(listed, list | tuple):
        listed = [listed]
    messages: list[dict[str, Any]] = []
    refs: list[Any] = []
    if settings.system_prompt and not (
        isinstance(turns[0], dict) and turns[0].get("role") == "system"
    ):
        messages.append(
            {"role": "system", "content": [{"type": "text", "text": settings.system_prompt}]}
        )
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise TuneError(
                f"turn {i + 1} is a {type(turn).__name__}, not a {{role, content}} object.",
                where=where,
                fix="give each turn as an object with role and content.",
            )
        role = turn.get("role", turn.get("from"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        if role not in chat.ROLES:
            raise TuneError(
                f"turn {i + 1} has role {role!r}.",
                where=where,
                fix=f"use one of {', '.join(chat.ROLES)}.",
            )
        content = turn.get("content", turn.get("value", ""))
        parts, inline = _parts(content, settings.placeholder, where, f"turn {i + 1}")
        if role == "assistant" and inline:
            raise TuneError(
                f"turn {i + 1} is an assistant turn holding an image; images belong to the "
                "prompt (user or system turns).",
                where=where,
                fix="move the image into the user turn before it.",
            )
        messages.append({"role": role, "content": parts})
        refs += inline
    explicit = [r for r in refs if r is not None]
    slots = len(refs) - len(explicit)
    if explicit and listed:
        raise TuneError(
            f"the row gives images both in its content parts ({len(explicit)}) and in "
            f"'{settings.images_field}' ({len(listed)}).",
            where=where,
            fix="give each image once: in an image part, or as a placeholder with the image in "
            f"'{settings.images_field}'.",
        )
    if slots != len(listed) and not explicit:
        raise TuneError(
            f"the row has {slots} image placeholder(s) ('{settings.placeholder}' or image parts "
            f"without an image) but {len(listed)} image(s) in '{settings.images_field}'.",
            where=where,
            fix=f"put exactly one '{settings.placeholder}' in the text per image, in the order of "
            f"'{settings.images_field}'.",
        )
    if slots and explicit:
        raise TuneError(
            f"{slots} image part(s) of the row name no image.",
            where=where,
            fix='give each image part its file: {"type": "image", "image": "path.png"}.',
        )
    if len(refs) > settings.max_images:
        raise TuneError(
            f"the row has {len(refs)} images, more than max_images = {settings.max_images}.",
            where=where,
            fix="raise [data] max_images, or split the conversation.",
        )
    sources = explicit or list(listed)
    images = [_image_bytes(ref, bases, f"{where} (image {k + 1})") for k, ref in enumerate(sources)]
    for k, image in enumerate(images):
        verify(image, f"{where} (image {k + 1})")
    if not any(m["role"] == "assistant" for m in messages):
        raise TuneError(
            "the conversation has no assistant turn, so nothing would be trained.",
            where=where,
            fix="end each conversation with the assistant's reply.",
        )
    return Record(messages, images)


def verify(image: Image, where: str) -> None:
    """A readable image; a truncated or corrupt file is one paragraph naming it."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(image.data)) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TuneError(
            f"image '{image.name}' cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
            where=where,
            fix="replace the file with an intact PNG/JPEG (or drop the row).",
        ) from None


def image_refs(row: dict[str, Any], settings: Any) -> list[Any]:
    """The image references of a raw row (for the cache key), without reading anything."""
    refs: list[Any] = []
    listed = row.get(settings.images_field)
    if isinstance(listed, list | tuple):
        refs += list(listed)
    elif listed is not None:
        refs.append(listed)
    for turn in row.get(settings.messages_field or "messages") or row.get("conversations") or []:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                    ref = part.get("image") or part.get("image_url")
                    refs.append(ref.get("url") if isinstance(ref, dict) else ref)
    return refs
