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

from tune.contract.format import DataFormat


class Session:
    """One conversation (or a series of raw continuations) with a loaded model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        use_template: bool,
        max_new_tokens: int,
        system: str | None = None,
        images: list[str] | None = None,
        inputs: Callable[[list[dict[str, Any]], list[str]], Any] | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        # images shown with the first message, turned into model inputs by the run's format
        self.images, self.inputs = list(images or []), inputs
        self.use_template = use_template
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []
        if system and use_template:
            self.messages.append({"role": "system", "content": system})

    def prompt(self, text: str) -> str:
        """The rendered prompt: the conversation so far through the template, or raw text."""
        from tune.model.generation import text_prompt

        if not self.use_template:
            return text_prompt(self.tokenizer, text)  # as the text format starts a document
        self.messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(
            self.messages, tokenize=False, add_generation_prompt=True
        )

    def reply(self, text: str) -> str:
        from tune.model.generation import greedy_generate

        if self.images and self.inputs is not None:
            answer = self._reply_with_images(text)
        else:
            prompt = self.prompt(text)
            answer = greedy_generate(self.model, self.tokenizer, prompt, self.max_new_tokens)
        if self.use_template:
            self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _reply_with_images(self, text: str) -> str:
        """Greedy reply to the conversation so far, whose first user turn shows the images."""
        import torch

        self.messages.append({"role": "user", "content": text})
        inputs = self.inputs(self.messages, self.images)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True)


def open_session(
    source: Path,
    pm: Any,
    precision: str,
    max_new_tokens: int,
    system: str | None,
    raw: bool,
    trust_remote_code: bool = False,
    images: list[str] | None = None,
) -> Session:
    from transformers.utils import logging as hf_logging
    from tune.machine.devices import auto_device
    from tune.trained.merge import load_trained, locate

    hf_logging.set_verbosity_error()  # a chat starts quietly: no load report, no progress bars
    hf_logging.disable_progress_bar()
    artifact, _, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    model, tokenizer = load_trained(artifact, recipe, pm, precision)
    model.to(auto_device())
    chat_trained = trained_on_chat(recipe, pm) and bool(getattr(tokenizer, "chat_template", None))
    system = system or recipe.raw.get("data", {}).get("system_prompt")  # as in training
    inputs = image_inputs(recipe, pm, tokenizer, source) if images else None
    return Session(
        model, tokenizer, chat_trained and not raw, max_new_tokens, system, images, inputs
    )


def image_inputs(recipe: Any, pm: Any, tokenizer: Any, source: Path) -> Callable:
    """The run's format's `prompt_inputs`, or one paragraph when it reads no images."""
    from tune.contract.context import RunContext
    from tune.errors import TuneError

    ctx = RunContext(recipe=recipe, output_dir=recipe.path.parent)
    fmt = pm.call("tune_format_data", recipe.selected("data_format"), tokenizer=tokenizer, ctx=ctx)
    if type(fmt).prompt_inputs is DataFormat.prompt_inputs:
        raise TuneError(
            f"this run was trained on '{recipe.selected('data_format').backend.name}' data, "
            "which holds no images, so its model is not shown any.",
            where=f"{source}: --image",
            fix="drop --image (or chat with a run trained on image data).",
        )
    return fmt.prompt_inputs


def trained_on_chat(recipe: Any, pm: Any) -> bool:
    """Whether the run's data format renders conversations through the chat template."""
    from tune.contract.context import RunContext
    from tune.errors import TuneError
    from tune.recipe import select_backends

    try:
        select_backends(recipe, pm, roles=("data_format",))
    except TuneError:  # the format's plugin is not installed here: talk raw
        return False
    ctx = RunContext(recipe=recipe, output_dir=recipe.path.parent)
    return bool(
        pm.call("tune_format_data", recipe.selected("data_format"), tokenizer=None, ctx=ctx).chat
    )


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
