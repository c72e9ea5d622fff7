"""One progress helper for every long loop, so ``--quiet`` silences all of them in one place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """A thin wrapper over ``rich.progress`` that can be switched off.

    Library functions take an optional ``Progress``; ``None`` or ``Progress(enabled=False)`` means
    silent, which is what tests and batch jobs want.
    """

    def __init__(self, enabled: bool = True, transient: bool = False) -> None:
        self.enabled = enabled
        self.transient = transient

    @contextmanager
    def task(self, description: str, total: int | None):
        """Yield an ``advance(n=1, **fields)`` callable for a task with ``total`` steps."""
        if not self.enabled:
            yield lambda n=1, **fields: None
            return
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
        from rich.console import Console

        # Progress goes to stderr so that stdout carries only results (paths, tables, JSON).
        with RichProgress(*columns, transient=self.transient, console=Console(stderr=True)) as bar:
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


def resolve(progress: Progress | None) -> Progress:
    """``None`` means silent."""
    return progress if progress is not None else Progress(enabled=False)
