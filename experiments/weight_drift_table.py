"""How far each run of a fine-tuning sweep moved its backbone from the pretrained weights (``||w - w0|| / ||w0||``),
averaged over seeds, by method and by a sweep parameter: the figure that explains an L2-SP-vs-plain comparison.

    python experiments/weight_drift_table.py runs/sweeps/text_finetune \
        --reference ../shared/models/all-MiniLM-L6-v2 --prefix backbone.model. --by data.target_labeled_per_class 'model.losses[0].init_args.alpha'

Reads each finished run's ``checkpoints/last.ckpt`` (runs without one are listed as skipped).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from da.diagnostics import state_dict_of, weight_drift
from da.runs.record import load_records
from da.experiments.tables import mean_std, method_order, split_methods


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep (or run) directory holding result.json files")
    ap.add_argument("--reference", required=True, help="the starting point: a HF folder, a checkpoint or a state dict")
    ap.add_argument("--prefix", default="backbone.model.", help="prefix of the reference's names in the checkpoints")
    ap.add_argument("--by", nargs="+", default=[], metavar="PARAM",
                    help="sweep parameters that split the method label, as in `da table --by`")
    args = ap.parse_args(argv)

    ref = state_dict_of(args.reference)
    cells, skipped = defaultdict(list), []
    for rec in split_methods(load_records(args.sweep, strict=False), args.by):
        ckpt = Path(rec["run_dir"]) / "checkpoints" / "last.ckpt"
        if rec["status"] != "finished" or not ckpt.exists():
            skipped.append(rec["run_dir"])
            continue
        d = weight_drift(state_dict_of(ckpt), ref, prefix=args.prefix)
        cells[(rec["method"], rec["task"])].append(d["relative"])
    tasks = sorted({t for _, t in cells})
    print("| method | " + " | ".join(tasks) + " |")
    print("|:--|" + "--:|" * len(tasks))
    for m in method_order(m for m, _ in cells):
        vals = []
        for t in tasks:
            xs = cells.get((m, t), [])
            vals.append(f"{100 * mean_std(xs)[0]:.2f}%" + ("" if len(xs) == 3 else f" (n={len(xs)})") if xs else "-")
        print(f"| {m} | " + " | ".join(vals) + " |")
    print(f"\n||w - w0|| / ||w0|| over the {args.prefix}* weights, mean over seeds (n=3 unless shown); "
          f"{len(skipped)} run(s) without a finished record or last.ckpt skipped.")

if __name__ == "__main__":
    main()
