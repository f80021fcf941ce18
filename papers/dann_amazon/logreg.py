"""The scikit-learn logistic-regression row of the DANN Amazon table, computed on the same files through da's reader.

For each of the 12 source -> target pairs: fit ``LogisticRegression(C)`` on the source's 2,000 labelled ``train``
reviews (all of them: no adaptation, no target data), report accuracy on the target's ``test`` file. Features are the
DANN paper's 5,000-d counts (Ganin et al., JMLR 2016, Sec. 5.1), read by ``da.data.domain.load_domain`` exactly as
``da fit --data.sources [amazon_dann/books]`` reads them. Deterministic (lbfgs; no seed to vary).

    python papers/dann_amazon/logreg.py --root ../shared/data            # prints a markdown table and the mean
    python papers/dann_amazon/logreg.py --root ../shared/data --C 0.1 --standardize l2
    python papers/dann_amazon/logreg.py --save-records results/amazon_logreg.jsonl   # packed records for da table

``--save-records`` writes one packed record per pair (method ``logreg``, seed 0, ``test/target_acc``), the format of
``da table --save-records``, so ``da table runs/sweeps/<sweep> results/amazon_logreg.jsonl`` shows the regression
as a column beside the trained methods.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

DOMAINS = ("books", "dvd", "electronics", "kitchen")


def pair_accuracies(root: str, C: float = 1.0, standardize: str = "none", max_iter: int = 2000) -> dict:
    """``{(source, target): target test accuracy}`` of a logistic regression trained on the source's train file."""
    from sklearn.linear_model import LogisticRegression

    from da.data.domain import load_domain

    data = {d: load_domain(f"amazon_dann/{d}", root=root, standardize=standardize) for d in DOMAINS}
    out = {}
    for s, t in itertools.permutations(DOMAINS, 2):
        src, tgt = data[s]["train"], data[t]["test"]
        clf = LogisticRegression(C=C, max_iter=max_iter)
        clf.fit(src.x.numpy().astype(np.float64), src.y.numpy())
        out[(s, t)] = float((clf.predict(tgt.x.numpy().astype(np.float64)) == tgt.y.numpy()).mean())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="data root holding text/amazon_reviews/dann_svmlight/")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of sklearn's LogisticRegression")
    p.add_argument("--standardize", default="none", choices=["none", "zscore", "l2"],
                   help="da's feature standardisation (per domain, from its train part)")
    p.add_argument("--save-records", default=None, metavar="FILE.jsonl",
                   help="also write packed records (method logreg) that da table reads")
    args = p.parse_args(argv)
    t0 = time.time()
    acc = pair_accuracies(args.root, args.C, args.standardize)
    if args.save_records:
        from da.runs.packed import write_packed
        suffix = "" if (args.C, args.standardize) == (1.0, "none") else f" C={args.C:g} {args.standardize}"
        write_packed(args.save_records, [
            {"schema": 1, "status": "finished", "task": f"amazon_dann/{s}->amazon_dann/{t}",
             "method": f"logreg{suffix}", "seed": 0, "config_hash": None, "recipe": "sklearn logistic regression",
             "metrics": {"test/target_acc": a}, "run_dir": f"logreg/{s}-{t}"} for (s, t), a in acc.items()])
    print(f"| pair | logistic regression (C={args.C:g}, standardize={args.standardize}) |\n|---|---:|")
    for (s, t), a in acc.items():
        print(f"| {s}->{t} | {100 * a:.1f} |")
    print(f"| **mean of 12** | **{100 * np.mean(list(acc.values())):.1f}** |")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
