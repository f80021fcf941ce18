"""The ``da`` command: a table of sub-commands, each implemented where its work lives.

* ``da fit | validate | test``: LightningCLI over the module and the data (:mod:`da.runs.cli_fit`). ``--config`` files
  compose left to right; every key can be overridden (``--model.lr 0.01``). ``da fit`` trains, then tests on the
  source and target test splits, and writes ``<run_dir>/result.json``.
* ``da sweep`` (:mod:`da.runs.sweep`), ``da table | plot`` (:mod:`da.experiments`), ``da detect``
  (:mod:`da.diagnostics.detect`), ``da multisource`` (:mod:`da.multisource_workflow`).

Each run owns a directory (``--run_dir``; default ``runs/<task>/<method>/<time>``) holding ``config.yaml``,
``metrics.csv``, ``checkpoints/{last,best}.ckpt``, ``predictions.pt`` and ``result.json``.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from da.runs.cli_fit import run_cli

__all__ = ["main", "run_cli", "EXTRA_COMMANDS"]


def _sweep(argv: Sequence[str]) -> int:
    from da.runs.sweep.command import sweep_main

    return sweep_main(argv)


def _table(argv: Sequence[str]) -> int:
    from da.experiments.commands import table_main

    return table_main(argv)


def _plot(argv: Sequence[str]) -> int:
    from da.experiments.commands import plot_main

    return plot_main(argv)


def _detect(argv: Sequence[str]) -> int:
    from da.diagnostics.detect import detect_main

    return detect_main(argv)


def _multisource(argv: Sequence[str]) -> int:
    from da.multisource_workflow import multisource_main

    return multisource_main(argv)


def _data(argv: Sequence[str]) -> int:
    from da.data.download import data_main

    return data_main(argv)


def _list(argv: Sequence[str]) -> int:
    from da.help import list_main

    return list_main(argv)


#: name -> (entry point taking the arguments after the name and returning an exit status, one-line help)
EXTRA_COMMANDS: Dict[str, Tuple[Callable[[Sequence[str]], int], str]] = {
    "sweep": (_sweep, "run a grid of experiments (skips finished, resumes killed runs)"),
    "table": (_table, "turn result.json records into a markdown/LaTeX/CSV table"),
    "plot": (_plot, "learning curves and t-SNE pictures"),
    "detect": (_detect, "negative-transfer verdicts and source rankings"),
    "multisource": (_multisource, "train one model per source, then fine-tune on the target toward all of them"),
    "data": (_data, "download a dataset with checksums: da data download office31 [--root DIR]"),
    "list": (_list, "what exists: datasets, methods, recipes, backbones, grids (one line each)"),
}

TOP_HELP = """usage: da <command> [options]

Domain adaptation and transfer learning on PyTorch Lightning.

training (LightningCLI; `da fit --help` lists da's options, `da fit --help-all` every option):
  fit        train a model (then test it on source and target) and write <run_dir>/result.json
  validate   evaluate on the validation splits
  test       evaluate a checkpoint on the source and target test splits (direct transfer: --ckpt_path)

experiments:
{extra}

examples:
  da fit --config configs/quickstart.yaml
  da fit --config configs/quickstart.yaml --config configs/method/dann.yaml --seed_everything 1
  da fit --config configs/data/jda_mnist_usps.yaml --config configs/benchmark/digits_tllib.yaml --config configs/method/mmd.yaml
  da sweep experiments/digits_ablation.yaml && da table runs/sweeps/digits_ablation
"""


def main(argv: Optional[List[str]] = None) -> None:
    """The ``da`` command; an error is one line ``da: error: ...`` (exit 2 for bad input), see ``docs/errors.md``."""
    from da.errors import run_main

    run_main(_main, argv)


def _main(argv: Optional[List[str]] = None) -> None:
    from_command_line = argv is None
    if from_command_line and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules (class_path: my_project.x) import from here, as with python -m
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        extra = "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in EXTRA_COMMANDS.items())
        print(TOP_HELP.format(extra=extra))
        return
    if argv[0] in EXTRA_COMMANDS:
        rc = EXTRA_COMMANDS[argv[0]][0](argv[1:])
        sys.exit(rc or 0)
    if argv[0] in ("fit", "validate", "test") and ("-h" in argv or "--help" in argv):
        from da.help import short_help

        return print(short_help(argv[0]), end="")  # da's own options; --help-all: LightningCLI's complete list
    if "--help-all" in argv:
        argv = ["--help" if a == "--help-all" else a for a in argv]
        sys.argv[1:] = argv if from_command_line else sys.argv[1:]
    from da.runs.preflight import check_config_files

    check_config_files(argv)
    run_cli(None if from_command_line else argv)


if __name__ == "__main__":  # pragma: no cover
    main()
