"""A worker of ``da sweep --launcher inprocess --jobs N``: runs its share of a sweep's jobs inside this process.

    python -m da.runs.sweep.worker <jobs.pkl> <events file>

The ``da sweep`` process writes the job list (pickled :class:`~da.runs.sweep.jobs.Job` objects) and starts N of these
with its share of the cores in ``OMP_NUM_THREADS``. Each walks the whole list with the ``inprocess`` launcher; the run
locks hand each run to one worker (the others find it held and go on, or find it finished). Each worker appends a
line per event to its events file, ``start<TAB>-<TAB><run_dir>`` when it has claimed a run and
``end<TAB><status><TAB><run_dir>`` when a job is done with (finished, failed, busy, skipped, waiting), which the
sweep process reads for its progress line and merges into one outcome per run
(:func:`~da.runs.sweep.launchers.merge_outcomes`). A worker reads its siblings' events too: a run another worker
started and did not finish (its lock is free) is one that worker died in, and is left to the sweep's failed record
rather than run again. Its own progress lines and errors go to stdout (the worker's log).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from da.runs.sweep.command import _stop_on_sigterm
    from da.runs.sweep.jobs import Job, Progress
    from da.runs.sweep.inprocess import InProcessLauncher, _execute_in_process

    jobs_file, events_file = (list(argv) if argv is not None else sys.argv[1:])[:2]
    jobs: list[Job] = pickle.loads(Path(jobs_file).read_bytes())
    events = open(events_file, "a", buffering=1)  # line-buffered: each event is one whole line on disk

    def emit(kind: str, status: str, job: Job) -> None:
        events.write(f"{kind}\t{status}\t{job.run_dir}\n")

    def abandoned(job: Job) -> bool:
        """Whether a worker of this sweep (the events files beside this one) started the run before: it is not
        finished (the lock is ours now), so that worker died in it."""
        line = f"start\t-\t{job.run_dir}\n"
        siblings = Path(events_file).parent.glob(Path(events_file).name.rsplit("-", 1)[0] + "-*.events")
        return any(line in p.read_text() for p in siblings)

    class Worker(InProcessLauncher):
        @staticmethod
        def execute(job: Job) -> str:
            status = _execute_in_process(job, on_claimed=lambda j: emit("start", "-", j), abandoned=abandoned)
            emit("end", status, job)
            return status

    _stop_on_sigterm()  # the sweep stops its workers with SIGTERM: the run in training stays resumable
    progress = Progress(total=len(jobs), stream=sys.stdout, name=f"worker {os.getpid()}")
    try:
        Worker().run(jobs, progress)
    except KeyboardInterrupt:
        return 130
    finally:
        progress.close()
        events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
