"""The one exception type for user mistakes: printed without a traceback, exit code 2."""

from __future__ import annotations


class TuneError(Exception):
    """A user mistake (recipe, data, environment) that the user can fix.

    `where` names the file, key or line; `fix` says what to do. Bugs are never TuneErrors:
    they keep their traceback.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def __reduce__(self):  # picklable, so errors raised in tokenization workers arrive whole
        return (_rebuild, (self.message, self.where, self.fix))

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


def did_you_mean(word: str, options) -> str:
    """A ' Did you mean ...?' suffix for the closest option, or ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _rebuild(message: str, where: str | None, fix: str | None) -> TuneError:
    return TuneError(message, where=where, fix=fix)
