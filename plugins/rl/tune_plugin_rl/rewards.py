"""Rewards `exact_match`, `regex`, `python` and `reward_model`.

Each is a `Reward` the core builds from its `[[reward]]` table; `score` gets the prompts, the
completions (decoded text) and the rows, and returns one float (or None: does not apply) per
completion. What a user can get wrong (a missing column, a reward file that does not exist, a
function that raises) is a `TuneError` naming the reward, the prompt and the fix.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from tune.plugin import Reward, Settings, TuneError, files


def _column(row: dict[str, Any], column: str, reward: str, index: int) -> Any:
    if column not in row:
        raise TuneError(
            f"reward '{reward}' reads the column '{column}', which prompt {index}'s row does "
            f"not have (it has {sorted(row)}).",
            where=f"[[reward]] {reward} column",
            fix=f"set column to one of the row's columns, or add '{column}' to every row.",
        )
    return row[column]


class ExactMatchSettings(Settings):
    """Keys of a `[[reward]]` with name = "exact_match"."""

    column: str = Field("answer", description="the row's column holding the expected answer")
    extract: str | None = Field(
        None,
        description="a regular expression: compare its first group (or whole match) in the "
        "completion, the last match wins; default: the whole completion",
    )
    lowercase: bool = Field(True, description="compare case-insensitively")
    strip_punctuation: bool = Field(True, description="ignore punctuation")
    collapse_whitespace: bool = Field(True, description="treat runs of spaces as one, trim ends")
    numeric: bool = Field(
        False, description="compare as numbers where both sides are ('1,000' == '1000.0')"
    )
    correct: float = Field(1.0, description="reward when equal")
    wrong: float = Field(0.0, description="reward when not")

    @field_validator("extract")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


class ExactMatch(Reward):
    """`correct` where the completion (or what `extract` finds in it) equals the row's column
    after normalisation, else `wrong`."""

    def normalize(self, text: str) -> str:
        s = self.settings
        if s.lowercase:
            text = text.lower()
        if s.strip_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        if s.collapse_whitespace:
            text = " ".join(text.split())
        return text

    def found(self, completion: str) -> str | None:
        if self.settings.extract is None:
            return completion
        matches = list(re.finditer(self.settings.extract, completion))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if last.groups() else last.group(0)

    def equal(self, got: str, want: str) -> bool:
        if self.settings.numeric:
            a, b = _number(got), _number(want)
            if a is not None and b is not None:
                return abs(a - b) <= 1e-9 * max(1.0, abs(b))
        return self.normalize(got) == self.normalize(want)

    def score(self, prompts, completions, rows):
        s = self.settings
        out = []
        for i, (completion, row) in enumerate(zip(completions, rows, strict=True)):
            want = str(_column(row, s.column, "exact_match", i))
            got = self.found(completion)
            out.append(s.correct if got is not None and self.equal(got, want) else s.wrong)
        return out


class RegexSettings(Settings):
    """Keys of a `[[reward]]` with name = "regex" (a format reward)."""

    pattern: str = Field(description="a regular expression the completion should match")
    mode: Literal["search", "fullmatch"] = Field(
        "search", description="anywhere in the completion (search) or all of it (fullmatch)"
    )
    multiline: bool = Field(True, description="'.' matches newlines too (re.DOTALL)")
    match: float = Field(1.0, description="reward when it matches")
    no_match: float = Field(0.0, description="reward when it does not")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class Regex(Reward):
    """`match` where the completion matches `pattern`, else `no_match`."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        flags = re.DOTALL if settings.multiline else 0
        self.pattern = re.compile(settings.pattern, flags)

    def score(self, prompts, completions, rows):
        s = self.settings
        test = self.pattern.search if s.mode == "search" else self.pattern.fullmatch
        return [s.match if test(c) else s.no_match for c in completions]


class PythonSettings(Settings):
    """Keys of a `[[reward]]` with name = "python": a function in a file beside the recipe."""

    function: str = Field(
        description='"file.py:name": a Python file (relative to the recipe\'s folder) and the '
        "function in it, called as name(prompts, completions, **columns) -> list of floats"
    )

    @field_validator("function")
    @classmethod
    def _file_and_name(cls, value: str) -> str:
        path, sep, name = value.rpartition(":")
        if not sep or not path.endswith(".py") or not name.isidentifier():
            raise ValueError('give "file.py:function_name", e.g. "rewards.py:correct"')
        return value


class Python(Reward):
    """The user's own function, TRL's reward-function signature: `f(prompts, completions,
    **columns)` with each column a list (one value per completion), returning one float (or
    None) per completion.

    The file is the user's code, named by the recipe they run: it is loaded from the recipe's
    folder (or the working directory) explicitly, once, and never from the run directory.
    """

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.fn: Any = None
        path, _, self.name = settings.function.rpartition(":")
        self.label = self.name  # logged as rewards/<function>/mean
        recipe = getattr(getattr(ctx, "recipe", None), "path", None)
        self.where = f"{recipe or 'recipe'}: [[reward]] python function"
        self.file = self._resolve(path, recipe)

    def _resolve(self, path: str, recipe: Any) -> Path:
        try:
            base = Path(recipe) if recipe else Path.cwd() / "recipe.toml"
            return Path(files.resolve_input(path, base, self.where))
        except TuneError as exc:
            raise TuneError(
                f"reward function file '{path}' was not found: {exc.message}",
                where=self.where,
                fix="put the file beside the recipe (or give a path from the recipe's folder) "
                'and name it as "file.py:function".',
            ) from None

    def check(self) -> None:
        """Without running the file (`tune validate`): it parses and defines the function."""
        import ast

        try:
            tree = ast.parse(self.file.read_text(encoding="utf-8"), str(self.file))
        except (SyntaxError, UnicodeDecodeError) as exc:
            raise TuneError(
                f"the reward file {self.file} is not valid Python: {exc}.",
                where=self.where,
                fix="fix the file so that `python " + str(self.file) + "` runs.",
            ) from None
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        names |= {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        if self.name not in names:
            raise TuneError(
                f"the reward file {self.file} defines no function '{self.name}' (it defines "
                f"{', '.join(sorted(names)) or 'nothing'}).",
                where=self.where,
                fix=f'name one of its functions: function = "{self.file.name}:<name>".',
            )

    def load(self) -> Any:
        """Import the file (once) and find the function."""
        if self.fn is not None:
            return self.fn
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"tune_reward_{self.file.stem}", self.file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: one paragraph, not a traceback
            raise TuneError(
                f"importing the reward file {self.file} failed: {type(exc).__name__}: {exc}.",
                where=self.where,
                fix="fix the file so that `python " + str(self.file) + "` runs.",
            ) from None
        fn = getattr(module, self.name, None)
        if not callable(fn):
            names = sorted(n for n, v in vars(module).items() if callable(v) and n[0] != "_")
            raise TuneError(
                f"the reward file {self.file} has no function '{self.name}' (it has "
                f"{', '.join(names) or 'no functions'}).",
                where=self.where,
                fix=f'name one of its functions: function = "{self.file.name}:<name>".',
            )
        self.fn = fn
        return fn

    def prepare(self, device: str) -> None:
        self.load()

    def score(self, prompts, completions, rows):
        fn = self.load()
        columns: dict[str, list[Any]] = {}
        for key in sorted({k for row in rows for k in row}):
            columns[key] = [row.get(key) for row in rows]
        columns.pop("prompt", None)
        columns.pop("completion", None)
        return fn(prompts, completions, **columns)


class RewardModelSettings(Settings):
    """Keys of a `[[reward]]` with name = "reward_model"."""

    path: str = Field(description="a sequence-classification model: hub id or local folder")
    batch_size: int = Field(8, ge=1, description="completions scored per forward")
    max_length: int = Field(1024, gt=0, description="tokens of prompt + completion kept")
    chat: bool = Field(
        True, description="score the conversation through the reward model's chat template"
    )
    trust_remote_code: bool = False


class RewardModel(Reward):
    """The logit of a sequence-classification model (its first label) on prompt + completion,
    batched, without gradients. Loaded once per rank, kept in evaluation mode."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"

    def prepare(self, device: str) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        s = self.settings
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(
            s.path, trust_remote_code=s.trust_remote_code
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            s.path, trust_remote_code=s.trust_remote_code
        ).to(device)
        self.model.eval().requires_grad_(False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def text(self, prompt: Any, completion: str) -> str:
        if self.settings.chat and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            messages = [*messages, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
        return text + completion

    def score(self, prompts, completions, rows):
        import torch

        if self.model is None:
            self.prepare(self.device)
        s = self.settings
        texts = [self.text(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), s.batch_size):
                enc = self.tokenizer(
                    texts[start : start + s.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=s.max_length,
                    add_special_tokens=False,
                ).to(self.device)
                logits = self.model(**enc).logits
                out.extend(float(v) for v in logits[:, 0].float().cpu())
        return out
