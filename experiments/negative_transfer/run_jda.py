"""The issue's "done when" case on a real task: JDA MNIST -> USPS few-shot (k = 10 labelled USPS digits per class,
the other half of USPS held out as the test set), a clean and a 60%-noisy MNIST source vs the target-only baseline.

    python experiments/negative_transfer/run_jda.py [--out runs/nt_jda] [--seeds 0 1 2] [--steps 500]
    da detect --transfer runs/nt_jda/clean --baseline runs/nt_jda/target_only
    da detect --transfer runs/nt_jda/noisy60 --baseline runs/nt_jda/target_only

Each run is one in-process ``da fit`` (``run_cli``) writing ``<out>/<arm>/seed<s>/result.json`` and
``predictions.pt``; transfer runs carry the ``NegativeTransferMonitor`` (probe off). Runs already finished are
skipped, so the script can be restarted.
"""

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import torch

ARMS = {
    "clean": ["--data.supervision", "source+target", "--data.source_label_noise", "0.0"],
    "noisy60": ["--data.supervision", "source+target", "--data.source_label_noise", "0.6"],
    "target_only": ["--config", "configs/method/oracle.yaml"],
}
MONITOR = ["--trainer.callbacks+=da.diagnostics.NegativeTransferMonitor", "--trainer.callbacks.every_n_steps", "25",
           "--trainer.callbacks.probe", "false"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/nt_jda")
    p.add_argument("--root", default="../shared/data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--plot", default="docs/img/nt_jda_ntg.png", help="NTG picture of both sources ('' for none)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    from da.cli import run_cli

    for seed in args.seeds:
        for arm, extra in ARMS.items():
            run_dir = Path(args.out) / arm / f"seed{seed}"
            rec = run_dir / "result.json"
            if rec.is_file() and json.loads(rec.read_text()).get("status") == "finished":
                continue
            t0 = time.time()
            argv = ["fit", "--config", "configs/data/jda_mnist_usps.yaml",
                    "--config", "configs/benchmark/digits_lenet_bn_adam.yaml", *extra,
                    "--data.root", args.root, "--data.target_labeled_per_class", str(args.k),
                    "--data.target_split", "0.5", "--data.num_workers", "0",
                    "--seed_everything", str(seed),
                    "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps),
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--trainer.accelerator", "cpu", "--run_dir", str(run_dir)]
            if arm != "target_only":
                argv += MONITOR
            run_cli(argv)
            print(f"[nt_jda] {arm} seed {seed}: {time.time() - t0:.1f}s", flush=True)
    if args.plot:
        from da.diagnostics.detect import detect_negative_transfer
        from da.diagnostics.plots import plot_ntg

        out = Path(args.out)
        res = {label: detect_negative_transfer([out / arm], [out / "target_only"])[0]
               for arm, label in (("clean", "clean source"), ("noisy60", "60%-noisy source"))}
        for name, r in res.items():
            print(name, "|", r.summary().replace("\n", " | "))
        plot_ntg(res, args.plot, title=f"JDA MNIST->USPS, k={args.k} labels/class: NTG vs target-only")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
