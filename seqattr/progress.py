"""`PassProgress`: one progress bar over the model passes of an ``attribute`` call.

A single long example can take minutes (integrated gradients at 50 points, KernelSHAP's samples), so a bar
over batches alone stays silent. Every evaluation of a `StepObjective` is one forward pass (with its
backward, for gradient methods) and advances the bar by one; methods that know how many passes a batch will
take say so with `PassProgress.expect`, and the bar then shows a total. The bar appears only when
``show_progress=True`` and the call has run for ``DELAY_S`` seconds (a short call shows nothing), is
transient (erased when done), and never changes a number.
"""

from __future__ import annotations

import time
from types import TracebackType

DELAY_S = 1.0
"""Seconds an ``attribute`` call runs before its bar appears: shorter calls need none."""


def expect_passes(objective, passes: int) -> None:
    """Announce ``passes`` evaluations of ``objective`` to its progress bar; a no-op for an objective without
    one (a `StepObjective` of a call without progress, or a test's own objective)."""
    progress = getattr(objective, "progress", None)
    if progress is not None:
        progress.expect(passes)


class PassProgress:
    """Counts the passes of one ``attribute`` call and shows them in a rich bar when enabled.

    Example:
        >>> with PassProgress("integrated_gradients", num_batches=1, enabled=False) as progress:
        ...     progress.expect(4)
        ...     for _ in range(4):
        ...         progress.advance()
        >>> progress.done, progress.total
        (4, 4)
    """

    def __init__(self, description: str, num_batches: int, enabled: bool = True) -> None:
        self.description = description
        self.num_batches = num_batches
        self.enabled = enabled
        self.batch = 0
        self.done = 0
        self.total: int | None = None
        self._started = time.perf_counter()
        self._bar = None  # a rich Progress, created once the call has run for DELAY_S
        self._task = None

    def __enter__(self) -> PassProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def next_batch(self) -> None:
        """A new batch starts (its expected passes add to the total)."""
        self.batch += 1
        self._refresh()

    def expect(self, passes: int) -> None:
        """``passes`` more passes are coming (called by methods that know their count)."""
        self.total = (self.total or 0) + passes
        self._refresh()

    def advance(self, passes: int = 1) -> None:
        """``passes`` passes are done (a pass no method announced raises the total with it)."""
        self.done += passes
        if self.total is not None and self.done > self.total:
            self.total = self.done
        self._refresh()

    def _label(self) -> str:
        batches = f" batch {self.batch}/{self.num_batches}" if self.num_batches > 1 else ""
        return f"{self.description}{batches}: model passes"

    def _refresh(self) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            if time.perf_counter() - self._started < DELAY_S:
                return
            self._bar = progress_bar(transient=True)
            self._task = self._bar.add_task(self._label(), total=self.total, completed=self.done)
            self._bar.start()
        self._bar.update(self._task, description=self._label(), total=self.total, completed=self.done)


def progress_bar(*extra_columns, transient: bool = False):
    """seqattr's rich progress bar: description, bar, done/total, elapsed and remaining time, then
    ``extra_columns`` (e.g. a `rich.progress.TextColumn` of a task field).

    Example:
        >>> bar = progress_bar()
        >>> [type(c).__name__ for c in bar.columns][:3]
        ['TextColumn', 'BarColumn', 'MofNCompleteColumn']
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        transient=transient,
        console=Console(stderr=True),  # stdout stays the output's (a CLI piped to a file, a test's capture)
    )
