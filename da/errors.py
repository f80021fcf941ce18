"""Error helpers: every error names the bad value and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ValueError:
    """``unknown dataset 'ofice31'; did you mean 'office31'? known: ...`` as a ``ValueError``."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name).lower(), [k.lower() for k in known], n=1, cutoff=0.5)
    hint = ""
    if close:
        match = next(k for k in known if k.lower() == close[0])
        hint = f"; did you mean '{match}'?"
    return ValueError(f"unknown {kind} '{name}'{hint} known: {', '.join(known)}")


class UserError(ValueError):
    """A mistake in what the user gave (a config, a flag, a file, a checkpoint, data), not a bug in `da`.

    The ``da`` command prints it as one line, ``da: error: <message>``, and exits with status 2; the message says
    what is wrong, which file or value, and the fix. Raise it (or a subclass) wherever bad input is detected.
    """

    exit_code = 2
