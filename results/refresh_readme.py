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
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

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


def _target_acc(path: Path) -> Dict[str, Dict[Tuple[str, int], float]]:
    """method -> (task, seed) -> final test/target_acc in %, finished runs only."""
    from da.runs.packed import read_packed

    out: Dict[str, Dict[Tuple[str, int], float]] = {}
    for r in read_packed(path):
        if r["status"] == "finished":
            out.setdefault(r["method"], {})[(r["task"], r["seed"])] = 100 * r["metrics"]["test/target_acc"]
    return out


def help_where_table(results: Path = RESULTS, baseline: str = "erm") -> str:
    """Markdown: per method, its JDA M->U and U->M target accuracy (mean over seeds), its Amazon mean over the 12
    pairs (the mean over seeds of each seed's 12-pair mean, complete seeds only) and on how many Amazon pairs its
    mean over seeds is above the baseline's; differences from the baseline's means in brackets, ``n=`` where fewer
    than 3 seeds ran. Rows by the mean of the two JDA directions, best first; methods without JDA runs last."""
    from statistics import mean

    jda, amazon = _target_acc(results / "jda_tllib.jsonl"), _target_acc(results / "amazon_dann_methods.jsonl")
    pairs = sorted({t for runs in amazon.values() for t, _ in runs})

    def cell_mean(runs: Dict[Tuple[str, int], float], task: str) -> Tuple[float, int]:
        v = [x for (t, _), x in runs.items() if t == task]
        return (mean(v), len(v)) if v else (float("nan"), 0)

    def amazon_mean(runs: Dict[Tuple[str, int], float]) -> Tuple[float, int]:
        by_seed: Dict[int, Dict[str, float]] = {}
        for (t, s), x in runs.items():
            by_seed.setdefault(s, {})[t] = x
        means = [mean(v.values()) for v in by_seed.values() if len(v) == len(pairs)]
        return (mean(means), len(means)) if means else (float("nan"), 0)

    base_jda = [cell_mean(jda[baseline], t)[0] for t in JDA_TASKS]
    base_amazon = amazon_mean(amazon[baseline])[0]
    base_pair = {t: cell_mean(amazon[baseline], t)[0] for t in pairs}

    def fmt(v: float, n: int, ref: float, is_base: bool) -> str:
        if v != v:
            return "—"
        return (f"{v:.1f}" if is_base else f"{v:.1f} ({v - ref:+.1f})") + ("" if n in (0, 3) else f" n={n}")

    def jda_key(m: str) -> float:
        v = [cell_mean(jda.get(m, {}), t)[0] for t in JDA_TASKS]
        return -(v[0] + v[1]) / 2 if v[0] == v[0] and v[1] == v[1] else float("inf")

    methods = sorted(set(jda) | set(amazon), key=lambda m: (m != baseline, jda_key(m), m))
    lines = ["| method | JDA M→U | JDA U→M | Amazon, 12-pair mean | Amazon pairs above source-only (any margin) |",
             "|---|---:|---:|---:|---:|"]
    for m in methods:
        is_base = m == baseline
        cells = [fmt(v, n, ref, is_base) if m in jda else "—"
                 for (v, n), ref in zip((cell_mean(jda.get(m, {}), t) for t in JDA_TASKS), base_jda)]
        am = fmt(*amazon_mean(amazon[m]), base_amazon, is_base) if m in amazon else "—"
        above = ("—" if is_base or m not in amazon else
                 f"{sum(cell_mean(amazon[m], t)[0] > base_pair[t] for t in pairs)} / {len(pairs)}")
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
    span = help_where_span(text)
    if span is not None:
        fresh = help_where_table(results)
        if text[span[0]:span[1]] != fresh:
            stale.append("help-where")
            print("help-where: differs from the records" + (" (rewritten)" if args.write else ""))
            text = text[:span[0]] + fresh + text[span[1]:]
        else:
            print("help-where: up to date")
    if args.write:
        path.write_text(text)
        return 0
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
