"""Progress of long stages (warm start, training, distillation, benchmark cells): the hook that
library loops call, and a live line on a terminal.

Library code takes a :class:`Progress` (default: one that shows nothing) and reports through it::

    with progress.stage("refits", total=10) as stage:
        for candidate in candidates:
            stage.advance(note=candidate.name)

Every progress object records how long each stage took (``durations``, seconds by stage name),
shown or not: the command-line entry points write them to ``metrics.json``.
:class:`ConsoleProgress` draws one line that it rewrites in place on the terminal
(``refits 3/10 [######----] 12.4 s  note``); it stays silent when its stream is not a terminal
or when the ``ude.progress`` logger is quieter than INFO (``hydra/job_logging=quiet``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Stage:
    """One running stage: ``advance`` counts done items; ``close`` ends it."""

    def __init__(self, progress: Progress, name: str, total: int | None, done: int = 0):
        self.progress, self.name, self.total, self.done = progress, name, total, done
        self.note = ""
        self.start = time.perf_counter()
        self.closed = False

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more items done; ``note`` (optional) says what is running now."""
        self.done += n
        if note is not None:
            self.note = note
        self.progress._update(self)

    def describe(self, note: str) -> None:
        """Say what is running now, without counting an item."""
        self.note = note
        self.progress._update(self)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.progress._finish(self)


class Progress:
    """Shows nothing; records each stage's duration in ``durations`` (seconds, by stage name;
    a stage run twice adds up)."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    def start(self, name: str, total: int | None = None, done: int = 0) -> Stage:
        """Start stage ``name`` of ``total`` items (None: unknown), ``done`` of them already."""
        stage = Stage(self, name, total, done)
        self._update(stage)
        return stage

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Stage]:
        """A stage that closes when the block ends, whether it ends well or not."""
        stage = self.start(name, total)
        try:
            yield stage
        finally:
            stage.close()

    def close_all(self) -> None:
        """End the stages still running (a run that stops on an error)."""

    def timings(self) -> dict[str, float]:
        """``{<stage>_seconds: seconds}``, stage names with ``_`` for spaces, for metrics.json."""
        return {f"{k.replace(' ', '_')}_seconds": round(v, 3) for k, v in self.durations.items()}

    def _update(self, stage: Stage) -> None:
        pass

    def _finish(self, stage: Stage) -> None:
        self.durations[stage.name] = self.durations.get(stage.name, 0.0) + stage.seconds


class _ClearLine(logging.Filter):
    """Clears the live line before a log message prints, so the message starts a clean line
    (the next update draws the live line again below it)."""

    def __init__(self, progress: ConsoleProgress):
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress._clear()
        return True


class ConsoleProgress(Progress):
    """A live line on ``stream`` (default stderr): the stage, done/total with a bar, the
    seconds so far and a note; redrawn at most ``every`` seconds, and once a second by a
    background timer while a stage runs, so that a stage with no count still shows its time.
    Nothing is drawn unless ``stream`` is a terminal and the ``ude.progress`` logger is enabled
    for INFO."""

    def __init__(self, stream: TextIO | None = None, every: float = 0.1, width: int = 20):
        super().__init__()
        self.stream = stream or sys.stderr
        self.every, self.width = every, width
        self._last = 0.0
        self._shown = False
        self._active: list[Stage] = []
        self._lock = threading.Lock()
        self._timer: threading.Thread | None = None
        self._filter = _ClearLine(self)

    @property
    def enabled(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty()) and logging.getLogger("ude.progress").isEnabledFor(
            logging.INFO
        )

    def line(self, stage: Stage) -> str:
        """The text of the live line for ``stage``."""
        parts = [stage.name]
        if stage.total:
            filled = min(self.width, round(self.width * stage.done / stage.total))
            parts.append(
                f"{stage.done}/{stage.total} [{'#' * filled}{'-' * (self.width - filled)}]"
            )
        elif stage.done:
            parts.append(str(stage.done))
        parts.append(f"{stage.seconds:.1f} s")
        if stage.note:
            parts.append(stage.note)
        return "  ".join(parts)

    def start(self, name: str, total: int | None = None, done: int = 0) -> Stage:
        stage = Stage(self, name, total, done)
        if self.enabled:
            with self._lock:
                if not self._active:
                    for handler in logging.getLogger().handlers:
                        handler.addFilter(self._filter)
                self._active.append(stage)
            if self._timer is None or not self._timer.is_alive():
                self._timer = threading.Thread(target=self._tick, daemon=True)
                self._timer.start()
            self._draw(stage, force=True)
        return stage

    def _update(self, stage: Stage) -> None:
        if stage in self._active:
            self._draw(stage)

    def _draw(self, stage: Stage, force: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:
            if not force and now - self._last < self.every:
                return
            self._last = now
            self.stream.write("\r\x1b[2K" + self.line(stage))
            self.stream.flush()
            self._shown = True

    def _clear(self) -> None:
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
                self._shown = False

    def _tick(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                if not self._active:
                    return
                stage = self._active[-1]
            self._draw(stage, force=True)

    def close_all(self) -> None:
        for stage in list(self._active):
            stage.close()

    def _finish(self, stage: Stage) -> None:
        super()._finish(stage)
        if stage not in self._active:
            return
        with self._lock:
            self._active.remove(stage)
            last = not self._active
            if last:
                for handler in logging.getLogger().handlers:
                    handler.removeFilter(self._filter)
        if last:
            self._clear()
        else:
            self._draw(self._active[-1], force=True)
