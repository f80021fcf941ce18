"""Wall time of the README's first command, `da fit --config configs/quickstart.yaml`, on this machine.

    python benchmarks/quickstart_time.py [--repeats 1] [--threads N]

Runs the command as a user would (a fresh process, so imports and data loading count), in a temporary run
directory, and prints the wall time, the source/target accuracies it printed, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the run (default: torch's)")
    args = p.parse_args(argv)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["da", "fit", "--config", "configs/quickstart.yaml", "--run_dir", tmp,
                   "--trainer.enable_progress_bar", "false"]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            line = next((l for l in out.stdout.splitlines() if l.startswith("[da]") and "target_acc" in l), "")
            rec = json.loads((Path(tmp) / "result.json").read_text())
            times.append(wall)
            print(f"run {i}: {wall:.1f} s wall ({rec['wall_time_s']:.1f} s inside da fit)  {line}")
    print(f"quickstart wall time: min {min(times):.1f} s, max {max(times):.1f} s over {len(times)} run(s); "
          f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"load average before the last run: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
