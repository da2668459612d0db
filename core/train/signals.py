"""Stopping well: SIGTERM (what clusters send before preemption) and the first Ctrl-C let the
current optimizer step finish, then the loop writes a checkpoint, prints the resume command and
exits with `EXIT_STOPPED`. A second Ctrl-C aborts at once (the last checkpoint stays whole).

Under torchrun a terminal Ctrl-C reaches each worker twice (from the terminal and forwarded by
the agent), so a second signal within `REPEAT_WINDOW_S` counts as the same one.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

EXIT_STOPPED = 3  # stopped on request with a checkpoint written: resumable
EXIT_ABORTED = 130  # stopped at once (second Ctrl-C, or before training began)
REPEAT_WINDOW_S = 1.0


class RunStopped(Exception):
    """The run ended on a signal; `code` is the process exit code, `message` what to tell."""

    def __init__(self, message: str, code: int):
        self.message = message
        self.code = code
        super().__init__(message)


class StopRequest:
    """Installed for the loop's duration; `requested` is the signal's name once one arrived."""

    def __init__(self, say: Any = print):
        self.say = say
        self.requested: str | None = None
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: keep the defaults
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested is None:
            self.requested, self._at = signal.Signals(signum).name, now
            self.say(
                f"{self.requested}: finishing this step, then writing a checkpoint "
                "(Ctrl-C again to stop at once)"
            )
        elif signum == signal.SIGINT and now - self._at > REPEAT_WINDOW_S:
            raise KeyboardInterrupt
