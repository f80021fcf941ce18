"""Images/s of an image-folder training loader, decoding JPEGs vs the decoded-image cache, with 0, 1, 2 workers.

    python benchmarks/image_loader.py                              # Office-31 amazon (../shared/data), 224 px
    python benchmarks/image_loader.py --workers 0 2 --batches 20 --image-size 64

For each worker count, the PIL pipeline (decode + ``RandomResizedCrop`` + flip + normalise, per image) and the cached
pipeline (``cache_decoded: true``: the same augmentation on ``uint8`` tensors cut from the in-memory cache) run one
after the other (one loader process tree at a time), each through a ``torch.utils.data.DataLoader`` over the
``train`` transform of the domain (shuffled, ``drop_last``), as ``da``'s data module builds it. Timed: ``--batches``
batches after ``--warmup`` untimed ones (worker start-up excluded); images/s = images / wall seconds. The cache is
built first in a fresh cache folder (the one-time decode, reported), then loaded from disk (a hit) for the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


def images_per_s(dataset, batch_size: int, workers: int, warmup: int, batches: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        generator=g)
    need = warmup + batches
    if need > len(loader):
        raise SystemExit(f"image_loader.py: {need} batches requested but one epoch has {len(loader)}; lower "
                         f"--batches / --warmup or --batch-size")
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _y = next(it)
        n += len(x)
    dt = time.perf_counter() - t0
    del it
    return n / dt


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(HERE.parent.parent / "shared" / "data"), help="data root (../shared/data)")
    p.add_argument("--domain", default="office31/amazon")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=20, help="timed batches per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per run (worker start-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--cache-dir", default=None, help="cache root (default: a fresh temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from da.data.domain import load_domain
    from da.data.readers.folders import with_transform

    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="da_image_cache_")
    opts = {"image_size": args.image_size, "cache_dir": cache_dir}
    t0 = time.perf_counter()
    plain = load_domain(args.domain, root=args.root, **opts)["all"]
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = load_domain(args.domain, root=args.root, cache_decoded=True, **opts)["all"]
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = load_domain(args.domain, root=args.root, cache_decoded=True, **opts)["all"]
    t_hit = time.perf_counter() - t0
    info = cached.meta["image_cache"]
    size_mb = os.path.getsize(info["cache_path"]) / 2**20
    print(f"{args.domain}: {len(plain)} images; domain load {t_plain:.1f} s (header scan); cache build "
          f"{t_build:.1f} s (hit: {built.meta['image_cache']['cache_hit']}), cache load {t_hit:.1f} s "
          f"(hit: {info['cache_hit']}), {size_mb:.0f} MiB at side {info['cache_side']}", file=sys.stderr)
    variants = {"decode (PIL)": with_transform(plain.dataset, "train"),
                "cached (uint8 tensors)": with_transform(cached.dataset, "train")}
    rows = []
    for w in args.workers:
        for name, ds in variants.items():
            ips = images_per_s(ds, args.batch_size, w, args.warmup, args.batches, seed=w)
            rows.append({"workers": w, "pipeline": name, "images_per_s": round(ips, 1)})
            print(f"workers={w} {name}: {ips:.0f} images/s", file=sys.stderr)
    print(f"\n`python benchmarks/image_loader.py {' '.join(sys.argv[1:])}`: {args.domain}, {len(plain)} images, "
          f"{args.image_size} px, batch {args.batch_size}, {args.batches} timed batches after {args.warmup}; "
          f"one-time cache build {t_build:.0f} s, {size_mb:.0f} MiB\n")
    print("| workers | decode (PIL) images/s | cached images/s | speed-up |\n|---:|---:|---:|---:|")
    for w in args.workers:
        a, b = (r["images_per_s"] for r in rows if r["workers"] == w)
        print(f"| {w} | {a:.0f} | {b:.0f} | {b / a:.1f}x |")
    print(json.dumps({"build_s": round(t_build, 1), "hit_load_s": round(t_hit, 1), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
