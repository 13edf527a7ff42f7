"""Errors a user can cause: reported as one line each on stderr with exit code 2."""
from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's config, data, paths or models; the message names the fix.

    Several problems found at once (`distillm check`) travel together, one line each.
    """

    def __init__(self, *problems: str):
        super().__init__(*problems)
        self.problems = [str(p) for p in problems]

    def __str__(self) -> str:
        return "\n".join(self.problems)


def report_and_exit(message) -> None:
    """Print each problem as `distillm: error: ...` on one line, and exit 2."""
    problems = message.problems if isinstance(message, UserError) else str(message).split("\n")
    for problem in problems:
        print(f"distillm: error: {' '.join(str(problem).split())}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
