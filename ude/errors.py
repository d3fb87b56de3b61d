"""The one exception type for errors a user can cause (files, specs, configs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UdeError(Exception):
    """A user-facing error: the message names the file, the place and the fix.

    The command-line entry points print ``str(err)`` on one line and exit with status 2.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        where: str | None = None,
        fix: str | None = None,
    ):
        parts = [p for p in (source, where) if p]
        text = (": ".join(parts) + ": " if parts else "") + message
        if fix:
            text += f" ({fix})"
        super().__init__(text)
        self.source = source
        self.where = where
        self.fix = fix


def one_line(err: BaseException) -> str:
    """The error's message on one line (a wrapped UdeError's own message when there is one)."""
    cause = err.__cause__ or err.__context__
    text = str(cause) if isinstance(cause, UdeError) else str(err)
    return " ".join(s.strip() for s in text.splitlines() if s.strip())


@contextmanager
def exit_2_on_user_errors() -> Iterator[None]:
    """Errors a user can cause print one line (no traceback) and exit with status 2."""
    # imported here: a command that only reads a spec need not load Hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ude.config_check import config_error

    try:
        yield
    except (UdeError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {one_line(config_error(err) or err)}", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function so that errors reach :func:`exit_2_on_user_errors`
    instead of Hydra's own printer."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with exit_2_on_user_errors():
        main()
