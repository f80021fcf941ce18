"""Error helpers: every error names the bad value and the fix, and the ``da`` command prints it as one line.

* :class:`UserError` (exit status 2) is the one exception type for bad input; :class:`MissingFileError` is the
  same for a file or folder that is not there (also a ``FileNotFoundError``).
* :func:`unknown_name` builds the ``unknown dataset 'ofice31'; did you mean 'office31'? known: ...`` error.
* :func:`run_main` is the top-level handler of the ``da`` command: a :class:`UserError` prints
  ``da: error: <message>`` on stderr and exits 2; any other exception prints one summary line and exits 1; the full
  traceback only with ``--debug`` (stripped from the arguments) or ``DA_DEBUG=1``. ``docs/errors.md`` lists the cases.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from typing import Callable, Iterable, List, Optional

DEBUG_FLAG = "--debug"
DEBUG_ENV = "DA_DEBUG"


class UserError(ValueError):
    """A mistake in what the user gave (a config, a flag, a file, a checkpoint, data), not a bug in `da`.

    The ``da`` command prints it as one line, ``da: error: <message>``, and exits with status 2; the message says
    what is wrong, which file or value, and the fix. Raise it (or a subclass) wherever bad input is detected.
    """

    exit_code = 2


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed to (or that a dataset needs) does not exist; the message says how to get it."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """``unknown dataset 'ofice31'; did you mean 'office31'? known: ...`` as a :class:`UserError` (a ``ValueError``)."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name).lower(), [k.lower() for k in known], n=1, cutoff=0.5)
    hint = ""
    if close:
        match = next(k for k in known if k.lower() == close[0])
        hint = f"; did you mean '{match}'?"
    return UserError(f"unknown {kind} '{name}'{hint} known: {', '.join(known)}")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    An exception re-raised by a ``DataLoader`` from a worker carries the worker's whole traceback in its message
    (``Caught UserError in DataLoader worker process 0. Original Traceback ...``); its last line is the original
    message, with the exception's type in front, which is removed.
    """
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        name = type(err).__name__
        for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
                break
        text = last
    if isinstance(err, KeyError) and err.args and text == repr(err.args[0]):
        text = str(err.args[0])
    return " ".join(text.split())


def debug_requested(argv: List[str]) -> bool:
    """``--debug`` in ``argv`` (removed from it, in place) or ``DA_DEBUG`` set to a true value."""
    found = DEBUG_FLAG in argv
    while DEBUG_FLAG in argv:
        argv.remove(DEBUG_FLAG)
    if found:  # child processes (DDP ranks, sweep runs) inherit the choice
        os.environ[DEBUG_ENV] = "1"
    return found or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_main(fn: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> object:
    """Run ``fn(argv)`` (the ``da`` command) and turn an exception into one line on stderr and an exit status.

    ``argv=None`` means the command line: ``--debug`` is then removed from ``sys.argv`` itself (Lightning's DDP
    launcher re-runs ``sys.argv``) and ``fn`` gets ``None``. Exit status: 2 for a :class:`UserError`, 1 for any other
    exception (a bug, or a case `da` does not yet check: the line says so), 130 for Ctrl-C; ``SystemExit`` (argument
    parsers, which print their own usage and error) passes through unchanged.
    """
    args = sys.argv if argv is None else list(argv)
    start = 1 if argv is None else 0
    rest = args[start:]
    debug = debug_requested(rest)
    args[start:] = rest
    try:
        return fn(None if argv is None else args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("da: interrupted", file=sys.stderr)
        sys.exit(130)
    except BaseException as err:  # noqa: BLE001 - the top of the program: everything ends here
        if debug:
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        if isinstance(err, UserError):
            print(f"da: error: {one_line(err)}", file=sys.stderr)
            sys.exit(UserError.exit_code)
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"da: error: {type(err).__name__}: {one_line(err)}{hint}", file=sys.stderr)
        sys.exit(1)
