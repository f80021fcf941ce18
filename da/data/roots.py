"""Where datasets live on disk, and the error that says how to get one that is missing.

The data root is laid out like ``../shared/data``::

    <root>/digits/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/digits/usps/usps.h5, usps.t.bz2
    <root>/digits/mnist_usps_jda/{MNIST,USPS}.mat
    <root>/office31/<domain>/<class>/*.jpg      (likewise officehome, pacs, ...)
    <root>/text/amazon_reviews/...

The root is, in order: the ``root`` argument (``--data.root``), the environment variable ``DA_DATA_ROOT``,
or ``./data``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_VAR = "DA_DATA_ROOT"
DEFAULT_ROOT = "./data"


def resolve_root(root: Optional[str | os.PathLike] = None) -> Path:
    """``root`` if given, else ``$DA_DATA_ROOT``, else ``./data`` (user ``~`` expanded; existence not checked)."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(os.path.expanduser(str(root)))


def missing_data_error(what: str, looked: Path, how: str) -> FileNotFoundError:
    """A :class:`~da.errors.MissingFileError` (a ``FileNotFoundError``) naming what is missing, where it was looked for and how to get it.

    Example: ``missing_data_error("MNIST", root / "digits/mnist", "pass --data.root ../shared/data")``.
    """
    from da.errors import MissingFileError

    return MissingFileError(
        f"{what} not found: looked in '{looked}' (data root from --data.root, ${ENV_VAR} or {DEFAULT_ROOT}). "
        f"To get it: {how}"
    )
