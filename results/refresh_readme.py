"""The README's result tables and the records behind them (``results/<sweep>.jsonl``).

Each README table printed by ``da table`` sits right after a ```` ```bash ```` block whose last ``da table`` command
names the sweep directory (``runs/sweeps/<sweep>``) and the options; its records are shipped packed in
``results/<sweep>.jsonl``, and ``da table results/<sweep>.jsonl <options>`` prints the table byte for byte
(``tests/test_packed.py`` checks every one).

    python results/refresh_readme.py                 # check: which tables differ from their records (exit 1 if any)
    python results/refresh_readme.py --write         # rewrite those tables in README.md from the records
    python results/refresh_readme.py --readme papers/adda_mnist_usps/README.md --write   # a paper page's tables

After a sweep finished (or grew), pack its records first:
``da table runs/sweeps/<sweep> --save-records results/<sweep>.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
_BLOCK = re.compile(r"```bash\n((?:(?!```).)*?)```\n\n((?:\|[^\n]*\n)+\nTable: [^\n]*\n)", flags=re.S)


def readme_tables(text: str) -> List[Tuple[str, List[str], str, Tuple[int, int]]]:
    """(sweep name, ``da table`` arguments after the path, the table text as printed, its span in ``text``) for
    every README table that directly follows a bash block ending in a ``da table <sweep dir> ...`` command."""
    out = []
    for m in _BLOCK.finditer(text):
        body = m.group(1).replace("\\\n", " ")  # continued lines
        commands = [line.split(" #")[0].strip() for line in body.splitlines() if line.startswith("da table ")]
        if commands:
            argv = shlex.split(commands[-1])[2:]
            n_paths = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
            # several sweeps in one table: one records file named after the first
            out.append((Path(argv[0]).name, argv[n_paths:], m.group(2), m.span(2)))
    return out


def table_from_records(name: str, args: List[str], results: Path = RESULTS) -> str:
    """What ``da table results/<name>.jsonl <args>`` prints."""
    from da.experiments.commands import table_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if table_main([str(results / f"{name}.jsonl"), *args]) != 0:
            raise SystemExit(f"da table results/{name}.jsonl failed")
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the tables that differ")
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--results", default=str(RESULTS), help="folder of the <sweep>.jsonl records")
    args = p.parse_args(argv)
    path, results = Path(args.readme), Path(args.results)
    text = path.read_text()
    stale = []
    for name, targs, table, span in reversed(readme_tables(text)):  # from the end: spans stay valid
        if not (results / f"{name}.jsonl").is_file():
            print(f"{name}: no results/{name}.jsonl (pack it: da table runs/sweeps/{name} --save-records "
                  f"results/{name}.jsonl)")
            stale.append(name)
            continue
        fresh = table_from_records(name, targs, results)
        if fresh != table:
            stale.append(name)
            print(f"{name}: differs from results/{name}.jsonl" + (" (rewritten)" if args.write else ""))
            if args.write:
                text = text[:span[0]] + fresh + text[span[1]:]
        else:
            print(f"{name}: up to date")
    if args.write:
        path.write_text(text)
        return 0
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
