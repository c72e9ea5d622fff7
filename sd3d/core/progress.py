"""One progress helper for every long loop, so ``--quiet`` silences all of them in one place.

On a terminal a task is a Rich progress bar. When stderr is not a terminal (a pipe, a log file, a
batch job) a live bar cannot redraw itself and collapses into one truncated line, so the same task
prints plain lines instead: one when it starts, one at every 10 % of its steps or every
:data:`PLAIN_INTERVAL_S` seconds (whichever comes first; only the time for tasks without a known
total), and one when it ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

T = TypeVar("T")

PLAIN_PERCENT_STEP = 10
"""A plain progress line at least every this many percent of a task's steps."""
PLAIN_INTERVAL_S = 5.0
"""... and at least every this many seconds while the task advances."""


class Progress:
    """A thin wrapper over ``rich.progress`` that can be switched off.

    Library functions take an optional ``Progress``; ``None`` or ``Progress(enabled=False)`` means
    silent, which is what tests and batch jobs want. ``stream``: where progress goes (default: the
    current ``sys.stderr``, so stdout carries only results). ``plain``: force plain lines (``True``)
    or the bar (``False``); ``None`` picks plain lines when the stream is not a terminal.
    """

    def __init__(
        self,
        enabled: bool = True,
        transient: bool = False,
        stream: IO[str] | None = None,
        plain: bool | None = None,
    ) -> None:
        self.enabled = enabled
        self.transient = transient
        self.stream = stream
        self.plain = plain

    def _stream(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stderr

    def _use_plain(self, stream: IO[str]) -> bool:
        if self.plain is not None:
            return self.plain
        isatty = getattr(stream, "isatty", None)
        try:
            return not (isatty is not None and isatty())
        except (OSError, ValueError):  # a closed or detached stream
            return True

    @contextmanager
    def task(self, description: str, total: int | None):
        """Yield an ``advance(n=1, info=None)`` callable for a task with ``total`` steps.

        ``advance(0)`` only lets time pass (a plain-line task without steps still reports that it
        is running).
        """
        if not self.enabled:
            yield lambda n=1, **fields: None
            return
        stream = self._stream()
        if self._use_plain(stream):
            with _plain_task(stream, description, total) as advance:
                yield advance
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        with RichProgress(*columns, transient=self.transient, console=Console(file=stream)) as bar:
            task_id = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, info: str | None = None) -> None:
                if info is None:
                    bar.advance(task_id, n)
                else:
                    bar.update(task_id, advance=n, info=info)

            yield advance

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate ``items`` while showing progress."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.task(description, total) as advance:
            for item in items:
                yield item
                advance()


@contextmanager
def _plain_task(stream: IO[str], description: str, total: int | None):
    """The plain-line form of :meth:`Progress.task` (see the module docstring)."""
    start = time.perf_counter()
    state = {"done": 0, "info": "", "last_time": start, "last_step": 0}
    step = max(1, -(-total * PLAIN_PERCENT_STEP // 100)) if total else None

    def emit(text: str) -> None:
        stream.write(f"{description}: {text}\n")
        stream.flush()

    def status(now: float) -> str:
        done, elapsed = state["done"], now - start
        info = f", {state['info']}" if state["info"] else ""
        if not total:
            steps = f", {done} done" if done else ""
            return f"running, {elapsed:.0f} s{steps}{info}"
        left = f", ~{elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        return f"{done}/{total} ({100 * done // total}%), {elapsed:.0f} s{left}{info}"

    def advance(n: int = 1, info: str | None = None) -> None:
        state["done"] += n
        if info is not None:
            state["info"] = info
        now = time.perf_counter()
        due_step = step is not None and state["done"] - state["last_step"] >= step
        due_time = now - state["last_time"] >= PLAIN_INTERVAL_S
        if (due_step or due_time) and (total is None or state["done"] < total):
            emit(status(now))
            state["last_time"], state["last_step"] = now, state["done"]

    emit(f"started ({total} steps)" if total else "started")
    yield advance
    info = f", {state['info']}" if state["info"] else ""
    count = f"{state['done']}/{total} " if total else (f"{state['done']} " if state["done"] else "")
    emit(f"finished {count}in {time.perf_counter() - start:.1f} s{info}")


def resolve(progress: Progress | None) -> Progress:
    """``None`` means silent."""
    return progress if progress is not None else Progress(enabled=False)
