"""Errors a user can cause: reported as one line on stderr with exit code 2."""
from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's config, data, paths or models; the message names the fix."""


def report_and_exit(message: str) -> None:
    first_line = " ".join(str(message).split())
    print(f"distillm: error: {first_line}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
