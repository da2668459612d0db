"""`tune chat`: talk to a trained run, or continue a (long) prompt, from the terminal.

The model is loaded the way `tune merge` builds it (base + every adapt step's trained weights),
so plugins that change generation keep working: a beacon model reads prompts longer than the
base model's positions window by window. Runs trained on chat/alpaca data are spoken to through
the saved chat template, with the conversation kept; other runs continue raw text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHAT_FORMATS = ("chat", "alpaca")


class Session:
    """One conversation (or a series of raw continuations) with a loaded model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        use_template: bool,
        max_new_tokens: int,
        system: str | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.use_template = use_template
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []
        if system and use_template:
            self.messages.append({"role": "system", "content": system})

    def prompt_ids(self, text: str) -> Any:
        if self.use_template:
            self.messages.append({"role": "user", "content": text})
            rendered = self.tokenizer.apply_chat_template(
                self.messages, tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(rendered, add_special_tokens=False, return_tensors="pt")
        raw = (self.tokenizer.bos_token or "") + text  # as the text format starts a document
        return self.tokenizer(raw, add_special_tokens=False, return_tensors="pt")

    def reply(self, text: str) -> str:
        import torch

        enc = self.prompt_ids(text)
        device = next(self.model.parameters()).device
        ids = enc["input_ids"].to(device)
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id,
            )
        answer = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        if self.use_template:
            self.messages.append({"role": "assistant", "content": answer})
        return answer


def open_session(
    source: Path, pm: Any, dtype: str, max_new_tokens: int, system: str | None, raw: bool
) -> Session:
    import torch
    from transformers.utils import logging as hf_logging
    from tune.merge import load_trained, locate

    hf_logging.set_verbosity_error()  # a chat starts quietly: no load report, no progress bars
    hf_logging.disable_progress_bar()
    adapter, _, recipe = locate(source, pm)
    model, tokenizer = load_trained(adapter, recipe, pm, dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    chat_trained = recipe.data.format in CHAT_FORMATS and bool(
        getattr(tokenizer, "chat_template", None)
    )
    system = system or recipe.raw.get("data", {}).get("system_prompt")  # as in training
    return Session(model, tokenizer, chat_trained and not raw, max_new_tokens, system)


def repl(session: Session, lines: Iterable[str], write: Callable[[str], None]) -> None:
    """Read one message per line until EOF, `/exit` or `/quit`; `/reset` starts over."""
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            session.messages = [m for m in session.messages if m["role"] == "system"]
            write("(conversation cleared)")
            continue
        if text.strip():
            write(session.reply(text))
