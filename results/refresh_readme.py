"""The README's result tables and the records behind them (``results/<sweep>.jsonl``).

Each README table printed by ``da table`` sits right after a ```` ```bash ```` block whose last ``da table`` command
names the sweep directory (``runs/sweeps/<sweep>``) and the options; its records are shipped packed in
``results/<sweep>.jsonl``, and ``da table results/<sweep>.jsonl <options>`` prints the table byte for byte
(``tests/test_packed.py`` checks every one).

    python results/refresh_readme.py                 # check: which tables differ from their records (exit 1 if any)
    python results/refresh_readme.py --write         # rewrite those tables in README.md from the records
    python results/refresh_readme.py --readme papers/adda_mnist_usps/README.md --write   # a paper page's tables

The README's "Which methods help where" table, which sets the two method benchmarks side by side (JDA digits under
TLlib's recipe, Amazon features), is not one ``da table``: it is written here (``help_where_table``) between the
``HELP_WHERE`` markers, from ``results/jda_tllib.jsonl`` and ``results/amazon_dann_methods.jsonl``, and checked the
same way.

After a sweep finished (or grew), pack its records first:
``da table runs/sweeps/<sweep> --save-records results/<sweep>.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from da.experiments.tables import mean_std

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


HELP_WHERE = ("<!-- help-where: written by results/refresh_readme.py from results/jda_tllib.jsonl and "
              "results/amazon_dann_methods.jsonl; do not edit by hand -->\n", "\n<!-- /help-where -->\n")
JDA_TASKS = ("jda/mnist->jda/usps", "jda/usps->jda/mnist")


def _selected(path: Path) -> Dict[str, Dict[Tuple[str, int], float]]:
    """method -> (task, seed) -> test/target_acc in %, of the run ``da table`` selects per seed (source-val)."""
    from da.experiments.selection import select_runs
    from da.runs.packed import read_packed

    out: Dict[str, Dict[Tuple[str, int], float]] = {}
    for pick in select_runs(read_packed(path)).picks:
        if pick.value is not None and math.isfinite(pick.value):
            out.setdefault(pick.method, {})[(pick.task, pick.seed)] = 100 * pick.value
    return out


def _per_task(runs: Dict[Tuple[str, int], float]) -> Dict[str, Tuple[float, int]]:
    """task -> (mean over seeds, number of seeds)."""
    by_task: Dict[str, List[float]] = {}
    for (task, _), x in runs.items():
        by_task.setdefault(task, []).append(x)
    return {t: (mean_std(v)[0], len(v)) for t, v in by_task.items()}


def _mean_of_complete_seeds(runs: Dict[Tuple[str, int], float], tasks: List[str]) -> Tuple[float, int]:
    """(mean over seeds of each seed's mean over ``tasks``, number of seeds), seeds that ran every task only."""
    by_seed: Dict[int, List[float]] = {}
    for (_, seed), x in runs.items():
        by_seed.setdefault(seed, []).append(x)
    means = [mean_std(v)[0] for v in by_seed.values() if len(v) == len(tasks)]
    return (mean_std(means)[0], len(means)) if means else (math.nan, 0)


def help_where_table(results: Path = RESULTS, baseline: str = "erm") -> str:
    """Markdown: per method, its JDA M->U and U->M target accuracy (mean over seeds), its Amazon mean over the 12
    pairs (the mean over seeds of each seed's 12-pair mean, complete seeds only) and on how many Amazon pairs its
    mean over seeds is above the baseline's; differences from the baseline's means in brackets, ``n=`` where fewer
    seeds ran than the baseline has. Rows by the mean of the two JDA directions, best first; methods without JDA
    runs last. Per seed, the run ``da table`` selects (the same cells as the README's tables)."""
    jda, amazon = _selected(results / "jda_tllib.jsonl"), _selected(results / "amazon_dann_methods.jsonl")
    pairs = sorted({t for runs in amazon.values() for t, _ in runs})
    jda_cells = {m: _per_task(runs) for m, runs in jda.items()}
    amazon_cells = {m: _per_task(runs) for m, runs in amazon.items()}
    amazon_means = {m: _mean_of_complete_seeds(runs, pairs) for m, runs in amazon.items()}
    full = max(n for _, n in jda_cells[baseline].values())

    def fmt(cell: Tuple[float, int], ref: float, is_base: bool) -> str:
        v, n = cell
        if not n:
            return "—"
        return (f"{v:.1f}" if is_base else f"{v:.1f} ({v - ref:+.1f})") + ("" if n == full else f" n={n}")

    def jda_mean(m: str) -> float:
        cells = jda_cells.get(m, {})
        return mean_std([cells[t][0] for t in JDA_TASKS])[0] if all(t in cells for t in JDA_TASKS) else -math.inf

    methods = sorted(set(jda) | set(amazon), key=lambda m: (m != baseline, -jda_mean(m), m))
    none = (math.nan, 0)
    lines = [f"| method | JDA M→U | JDA U→M | Amazon, {len(pairs)}-pair mean | Amazon pairs above source-only (any "
             f"margin) |", "|---|---:|---:|---:|---:|"]
    for m in methods:
        is_base = m == baseline
        cells = [fmt(jda_cells.get(m, {}).get(t, none), jda_cells[baseline][t][0], is_base) for t in JDA_TASKS]
        am = fmt(amazon_means.get(m, none), amazon_means[baseline][0], is_base)
        above = ("—" if is_base or m not in amazon else
                 f"{sum(amazon_cells[m][t][0] > amazon_cells[baseline][t][0] for t in pairs if t in amazon_cells[m])}"
                 f" / {len(pairs)}")
        lines.append(f"| {m} | {cells[0]} | {cells[1]} | {am} | {above} |")
    return "\n".join(lines) + "\n"


def help_where_span(text: str) -> Tuple[int, int] | None:
    """The span of the generated table between the ``HELP_WHERE`` markers, or None where the text has none."""
    start = text.find(HELP_WHERE[0])
    if start < 0:
        return None
    start += len(HELP_WHERE[0])
    end = text.find(HELP_WHERE[1], start)
    if end < 0:
        raise SystemExit(f"the help-where table has no end marker {HELP_WHERE[1]!r}")
    return start, end


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the tables that differ")
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--results", default=str(RESULTS), help="folder of the <sweep>.jsonl records")
    args = p.parse_args(argv)
    path, results = Path(args.readme), Path(args.results)
    text = path.read_text()
    blocks = []  # (name, span, what the records give; None where they are not shipped, where they come from)
    for name, targs, _, span in readme_tables(text):
        have = (results / f"{name}.jsonl").is_file()
        blocks.append((name, span, table_from_records(name, targs, results) if have else None,
                       f"results/{name}.jsonl"))
    span = help_where_span(text)
    if span is not None:
        blocks.append(("help-where", span, help_where_table(results), "the JDA and Amazon records"))
    stale = []
    for name, span, fresh, source in sorted(blocks, key=lambda b: b[1], reverse=True):  # from the end: spans stay valid
        if fresh is None:
            print(f"{name}: no {source} (pack it: da table runs/sweeps/{name} --save-records {source})")
        elif fresh == text[span[0]:span[1]]:
            print(f"{name}: up to date")
            continue
        else:
            print(f"{name}: differs from {source}" + (" (rewritten)" if args.write else ""))
            text = text[:span[0]] + fresh + text[span[1]:]
        stale.append(name)
    if args.write:
        path.write_text(text)
        return 0
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
