"""How far each run of a fine-tuning sweep moved its backbone from the pretrained weights (``||w - w0|| / ||w0||``),
averaged over seeds, by method and by a sweep parameter: the figure that explains an L2-SP-vs-plain comparison.

    python experiments/weight_drift_table.py runs/sweeps/text_finetune \
        --reference ../shared/models/all-MiniLM-L6-v2 --prefix backbone.model. --by data.target_labeled_per_class

Reads each finished run's ``checkpoints/last.ckpt`` (runs without one are listed as skipped).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from da.diagnostics import state_dict_of, weight_drift
from da.experiments.records import load_records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep (or run) directory holding result.json files")
    ap.add_argument("--reference", required=True, help="the starting point: a HF folder, a checkpoint or a state dict")
    ap.add_argument("--prefix", default="backbone.model.", help="prefix of the reference's names in the checkpoints")
    ap.add_argument("--by", default=None, help="sweep parameter for the columns (e.g. data.target_labeled_per_class)")
    args = ap.parse_args(argv)

    ref = state_dict_of(args.reference)
    cells, skipped = defaultdict(list), []
    for rec in load_records(args.sweep, strict=False):
        ckpt = Path(rec["run_dir"]) / "checkpoints" / "last.ckpt"
        if rec["status"] != "finished" or not ckpt.exists():
            skipped.append(rec["run_dir"])
            continue
        col = "all"
        if args.by:
            import json
            params = json.loads((Path(rec["run_dir"]) / "sweep.json").read_text()).get("params", {})
            col = str(params.get(args.by))
        d = weight_drift(state_dict_of(ckpt), ref, prefix=args.prefix)
        cells[(rec["task"], rec["method"], col)].append(d["relative"])
    cols = sorted({c for _, _, c in cells}, key=lambda c: (c != "None", float(c) if c.replace(".", "").isdigit() else 0))
    rows = sorted({(t, m) for t, m, _ in cells})
    print(f"| task | method | " + " | ".join(f"{args.by}={c}" if args.by else "drift" for c in cols) + " |")
    print("|:--|:--|" + "--:|" * len(cols))
    for t, m in rows:
        vals = []
        for c in cols:
            xs = cells.get((t, m, c), [])
            vals.append(f"{100 * statistics.mean(xs):.2f}% (n={len(xs)})" if xs else "")
        print(f"| {t} | {m} | " + " | ".join(vals) + " |")
    print(f"\n||w - w0|| / ||w0|| over the {args.prefix or ''}* weights, mean over seeds; "
          f"{len(skipped)} run(s) without a finished record or last.ckpt skipped.")


if __name__ == "__main__":
    main()
