"""Errors of the user's own making and how the command lines report them.

A `UserError` is a problem with what the user gave (an option, a config key or value, an arch, a file
or folder, a refused resume): its message names the problem and the fix. The command lines print it as
one line, `<program>: error: <message>`, and exit with status 2, as argparse does for a bad option;
with DETNAS_DEBUG=1 in the environment they show the traceback instead. Any other exception is a bug
and keeps its traceback.
"""

import contextlib
import os
import sys
from typing import Callable, Optional

__all__ = [
    "DEBUG_ENV",
    "USER_ERROR_EXIT",
    "UserError",
    "debugging",
    "print_user_error",
    "reporting_user_errors",
]

DEBUG_ENV = "DETNAS_DEBUG"
USER_ERROR_EXIT = 2


class UserError(ValueError):
    """A bad input of the user's, with a message that names it and the fix (a ValueError, as the
    checks of options and files raise)."""


def debugging() -> bool:
    """True when DETNAS_DEBUG asks for tracebacks of user errors too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _program() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name != "-c" else "detnas_d2"


def print_user_error(message: str, program: str = ""):
    print(f"{program or _program()}: error: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def reporting_user_errors(program: str = "", report: Optional[Callable[[str], None]] = None):
    """Inside, a UserError ends the process as one line on stderr and exit status 2 (the traceback
    with DETNAS_DEBUG=1); other exceptions pass. `program` names the command (default: the script);
    `report(message)`, when given, reports the message instead of printing it."""
    try:
        yield
    except UserError as e:
        if debugging():
            raise
        (report or (lambda message: print_user_error(message, program)))(str(e))
        raise SystemExit(USER_ERROR_EXIT) from None
