"""Silence the warnings and log lines that are false or advertising on a normal ``da`` run, each by its exact text
(everything else still shows):

* Lightning's CSV logger: "Experiment logs directory <run_dir> exists and is not empty. Previous log files in this
  directory will be deleted when the new ones are saved!" -- false for a ``da`` run: the run directory already holds
  ``config.yaml``, and an old ``metrics.csv`` is moved to ``metrics.prev.csv`` (or appended to, on resume) before the
  logger starts; nothing is deleted.
* Lightning's "💡 Tip: For seamless cloud ... try installing [litlogger] / [litmodels]" lines: advertisements.
* torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised inside Lightning's own code
  (``pytorch_lightning/utilities/_pytree.py``), not fixable by the user.
"""

from __future__ import annotations

import logging
import warnings

FALSE_OR_ADVERTISING = (
    r"Experiment logs directory .* exists and is not empty\. Previous log files in this directory will be deleted",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
TIP_PREFIX = "💡 Tip:"
RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def quiet_known_noise() -> None:
    """Install the filters (idempotent)."""
    for pattern in FALSE_OR_ADVERTISING:
        warnings.filterwarnings("ignore", message=pattern)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
