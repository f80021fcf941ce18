"""One framework's runs for ``benchmarks/peers.py``, in a process of their own.

``python benchmarks/peer_worker.py <framework> <jobs.json> <results.jsonl>`` runs the jobs one after the other and
appends one JSON line per job: the job's keys plus ``acc`` (target test accuracy, %), ``steps``, ``timed_steps``,
``step_ms`` (mean thread CPU ms per training step), ``wall_s``, or ``error`` (why the framework could not run it).
The parent chooses the interpreter path (``PYTHONPATH``) per framework, so the peers' pinned packages never meet
``da``'s. The data are the arrays ``peers.py`` read through ``da``'s reader, saved as ``.pt`` files.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any, Dict

import torch


def _load(path: str, cache: Dict[str, Any]) -> Dict[str, Any]:
    if path not in cache:
        data = torch.load(path, weights_only=True)
        cache[path] = {k: v.to_dense() if isinstance(v, torch.Tensor) and v.is_sparse else v for k, v in data.items()}
    return cache[path]


def run_job(framework: str, job: Dict[str, Any], cache: Dict[str, Any]) -> Dict[str, Any]:
    if framework == "da":
        import peer_da

        return peer_da.run(job)
    data = _load(job["data"], cache)
    if framework == "skada":
        import peer_skada

        return peer_skada.run(job, data)
    if framework == "pytorch-adapt":
        import peer_adapt

        return peer_adapt.run(job, data)
    raise ValueError(f"unknown framework {framework!r}; known: da, skada, pytorch-adapt")


def main(argv=None) -> int:
    framework, jobs_path, out_path = (argv or sys.argv[1:])[:3]
    torch.set_num_threads(1)
    jobs = json.loads(open(jobs_path).read())
    cache: Dict[str, Any] = {}
    for job in jobs:
        t0 = time.time()
        try:
            res = run_job(framework, job, cache)
        except Exception as err:  # a peer that cannot run a job: its row says why, the others still run
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            res = {"error": f"{type(err).__name__}: {last[-300:]}"}
            traceback.print_exc()
        res = {**{k: job[k] for k in ("framework", "task", "method", "seed")}, **res,
               "wall_s": round(time.time() - t0, 2)}
        with open(out_path, "a") as f:
            f.write(json.dumps(res) + "\n")
        state = f"acc {res['acc']:.2f}  {res['step_ms']:.2f} ms/step" if "acc" in res else res["error"]
        print(f"[peers] {framework:<13} {job['task']:<40} {job['method']:<6} seed {job['seed']}: {state}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
