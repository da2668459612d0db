"""`tune export --verify` and `tune verify FILE --against RUN`: the artifact, in the runtime
that will serve it, against the model the run trained.

Export and serving break more often than training (a wrong pre-tokenizer, an end-of-turn token
the runtime does not stop at, a template without its generation prompt, a quantization too
coarse). The core builds the `Reference` (the trained model in transformers, in float32, with
prompts and texts of the run's own data rendered as training rendered them) and asks the
format's exporter (`Exporter.verify`, a plugin: the core names no runtime) to load the file
and compare. The answer is a table of checks; one failure makes the command exit non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.contract.context import RunContext
from tune.contract.exporter import Check
from tune.errors import TuneError

# Texts whose tokenization a wrong pre-tokenizer changes (contractions, runs of spaces, digit
# runs, newlines and tabs, accents, emoji), checked besides the run's own texts.
PROBES = [
    "it's   spaced",
    "I'll say: we're sure they've DON'T   x",
    "12345 + 678 = 13023, 3.14159",
    "Hello\n\nWorld\tTab  \n  indented",
    "naïve café – 🦙 日本語",
]
# Conversations rendered through the chat template (the run's data holds rows, not messages).
CONVERSATIONS = [
    [{"role": "user", "content": "it's   spaced: reverse hello"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Hi 123"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Again?"},
    ],
]
VERIFY_ROLES = ("data_source", "data_format")


@dataclass
class Reference:
    """The trained model in transformers and what to ask it: the run's prompts (token ids as
    training rendered them), texts (for tokenization), conversations (for the chat template)."""

    model: Any
    tokenizer: Any
    prompts: list[list[int]]
    texts: list[str]
    conversations: list[list[dict[str, str]]]
    stop_ids: list[int]
    turn_end: int | None  # the token the chat template closes an assistant turn with
    source: str  # where the prompts came from, for the report
    new_tokens: int = 32
    _greedy: dict[tuple[int, ...], list[int]] = field(default_factory=dict)

    def logits(self, ids: list[int]) -> Any:
        """Next-token logits at every position of `ids`: a float32 numpy array [len, vocab]."""
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]))
        return out.logits[0].float().numpy()

    def greedy(self, ids: list[int]) -> list[int]:
        """The `new_tokens` greedy tokens after `ids`, not stopped at a stop token: the
        numerics compared over the whole length (where generation stops is its own check)."""
        key = tuple(ids)
        if key not in self._greedy:
            import warnings

            import torch

            out: list[int] = []
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # transformers' cache renames
                step = self.model(input_ids=torch.tensor([ids]), use_cache=True)
                for _ in range(self.new_tokens):
                    token = int(step.logits[0, -1].argmax())
                    out.append(token)
                    step = self.model(
                        input_ids=torch.tensor([[token]]),
                        past_key_values=step.past_key_values,
                        use_cache=True,
                    )
            self._greedy[key] = out
        return self._greedy[key]

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokens the trained chat template gives `messages` with the generation prompt."""
        text = self.chat_text(messages)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str) -> list[int]:
        """`text` tokenized as transformers does for the model (special tokens parsed, BOS
        added when the tokenizer adds it)."""
        return self.tokenizer(text)["input_ids"]


def build_reference(
    source: Path, pm: Any, trust_remote_code: bool = False, n_prompts: int = 4
) -> Reference:
    """The trained model of `source` (a run, final/ or a model folder) and its prompts."""
    from transformers.utils import logging as hf_logging
    from tune.trained.merge import load_trained, locate

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import warnings

    artifact, _, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # library renames, not the user's
        model, tokenizer = load_trained(artifact, recipe, pm, "fp32")
    model.float().eval()
    examples, where = _run_examples(pm, recipe, tokenizer)
    prompts, texts = [], []
    for example in examples:
        ids = list(example["input_ids"])
        labels = list(example.get("labels", ids))
        first = next((i for i, label in enumerate(labels) if label != -100), len(ids))
        prompt = ids[:first] if first >= 2 else ids[: min(16, len(ids))]
        if 2 <= len(prompt) <= 256 and prompt not in prompts:
            prompts.append(prompt)
        if len(ids) <= 512:
            bos = tokenizer.bos_token_id
            body = ids[1:] if ids and ids[0] == bos and _adds_bos(tokenizer) else ids
            texts.append(tokenizer.decode(body, skip_special_tokens=False))
        if len(prompts) >= n_prompts and len(texts) >= 2 * n_prompts:
            break
    conversations = [c for c in CONVERSATIONS if _renders(tokenizer, c)]
    if not prompts:  # no data here: the template's (or raw) prompts, said in the report
        where = "built-in prompts (the run's data is not readable here)"
        for messages in conversations:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        prompts += [tokenizer(text)["input_ids"] for text in PROBES[: n_prompts - len(prompts)]]
    return Reference(
        model=model,
        tokenizer=tokenizer,
        prompts=prompts[:n_prompts],
        texts=texts[: 2 * n_prompts] + PROBES,
        conversations=conversations,
        stop_ids=_stop_ids(model, tokenizer),
        turn_end=_turn_end(tokenizer),
        source=where,
    )


def _run_examples(pm: Any, recipe: Any, tokenizer: Any) -> tuple[list[dict], str]:
    """The run's eval examples (else its training examples), tokenized as in training."""
    from tune.data.pipeline import load_examples
    from tune.recipe import select_backends

    try:
        select_backends(recipe, pm, roles=VERIFY_ROLES)
        data = load_examples(
            pm, tokenizer, RunContext(recipe=recipe, output_dir=recipe.path.parent)
        )
    except (TuneError, OSError, KeyError, AttributeError):
        return [], ""
    rows = list(data.eval or [])[:64] + list(data.train or [])[:64]
    which = " and ".join(n for n, r in (("eval", data.eval), ("train", data.train)) if r)
    return rows, f"{which} rows of the run's data ({recipe.data.train})" if rows else ""


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _renders(tokenizer: Any, messages: list[dict[str, str]]) -> bool:
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        return False
    try:
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses a system turn, or alternation rules
        return False
    return True


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids generation ends at: the generation config's eos ids, the tokenizer's eos and the
    chat template's end of turn."""
    ids: list[int] = []
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    turn_end = _turn_end(tokenizer)
    if turn_end is not None:
        ids.append(turn_end)
    return list(dict.fromkeys(ids))


def _turn_end(tokenizer: Any) -> int | None:
    """The special token that follows an assistant's words in the chat template (None: no
    template, or it ends turns with plain text)."""
    mark = "\u2063REPLY\u2063"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:
        return None
    if not isinstance(text, str) or mark not in text:
        return None
    after = tokenizer(text.split(mark, 1)[1], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    return next((i for i in after if i in special), None)


def choose_exporter(pm: Any, path: Path, recipe: Any) -> Any:
    """The exporter whose format `path` is (each declared exporter is asked `reads`)."""
    from tune.recipe import Selected

    ctx = RunContext(recipe=recipe, output_dir=path.parent)
    names = []
    for backend in pm.declared("exporter"):
        names.append(backend.name)
        if backend.missing():
            continue
        exporter = pm.build(Selected(backend, backend.settings.model_validate({})), ctx)
        if exporter.reads(path):
            return exporter
    raise TuneError(
        "no installed exporter recognizes this file.",
        where=str(path),
        fix=f"give a file one of them wrote ({', '.join(names) or 'none installed'}).",
    )


def run_checks(exporter: Any, files: list[Path], reference: Reference) -> list[Check]:
    """The exporter's checks of `files`, as `Check`s (a format without any is one line)."""
    checks = exporter.verify(files, reference)
    if checks is None:
        return [Check("verify", None, "this format has no verification")]
    return [c if isinstance(c, Check) else Check(*c) for c in checks]


def verify_file(
    artifact: Path, against: Path, pm: Any, trust_remote_code: bool = False
) -> tuple[list[Check], Reference]:
    """`tune verify ARTIFACT --against RUN`."""
    from tune.trained.merge import locate

    if not artifact.exists():
        raise TuneError("file not found.", where=str(artifact), fix="give an exported file.")
    _, _, recipe = locate(against, pm, trust_remote_code=trust_remote_code)
    exporter = choose_exporter(pm, artifact.absolute(), recipe)
    reference = build_reference(against, pm, trust_remote_code)
    return run_checks(exporter, [artifact.absolute()], reference), reference


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.ok is False]


def show(checks: list[Check], reference: Reference, console: Any, title: str) -> None:
    """The table of checks."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("CHECK", "RESULT", "DETAIL", box=None, title=title, title_justify="left")
    for check in checks:
        result = {True: "[green]ok[/green]", False: "[red]FAIL[/red]", None: "info"}[check.ok]
        table.add_row(check.name, result, escape(check.detail))
    console.print(table)
    console.print(f"prompts: {len(reference.prompts)} from {reference.source}")


def refuse_failed(checks: list[Check], artifact: Path) -> None:
    """Exit non-zero naming the failed checks (after the table)."""
    bad = failed(checks)
    if bad:
        raise VerifyFailed(
            f"{artifact.name} failed verification: "
            + "; ".join(f"{c.name} ({c.detail})" for c in bad)
        )


class VerifyFailed(Exception):
    """A check failed: the command exits 1 with this one line (not a user mistake: exit 2)."""
