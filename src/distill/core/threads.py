"""How many CPU threads a job's PyTorch work uses, chosen once per job and said in its report.

torch starts with one intra-op thread per logical CPU it may use. On a machine with simultaneous
multithreading that doubles the threads that compete for one core's units, and under `torchrun` every
process takes them all. The rule here: a choice already made is kept (`OMP_NUM_THREADS`, or a
`torch.set_num_threads` call that left torch at neither start value its builds use, one thread per
logical CPU or per physical core); else the physical cores this process
may run on, shared among the processes of this machine (`LOCAL_WORLD_SIZE`).
"""

from __future__ import annotations

import os

import torch


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (psutil counts the machine's; affinity may
    allow fewer)."""
    import psutil

    logical, physical = psutil.cpu_count(logical=True) or 1, psutil.cpu_count(logical=False) or 1
    return max(1, min(usable_cpus(), usable_cpus() * physical // logical))


_CHOSEN: dict[str, object] = {}  # this process's choice: made by its first job, kept by the next ones


def choose_threads() -> dict[str, object]:
    """Set torch's intra-op threads for this job; {"threads", "why", "sentence"} for its report (which
    renders the stored sentence, so a re-rendered report says what the run did)."""
    if _CHOSEN and torch.get_num_threads() == _CHOSEN["threads"]:
        return dict(_CHOSEN)
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        _CHOSEN.update(threads=torch.get_num_threads(), why=f"OMP_NUM_THREADS={env}")
    elif torch.get_num_threads() not in (usable_cpus(), physical_cores()):  # neither of torch's own start values
        _CHOSEN.update(threads=torch.get_num_threads(), why="torch.set_num_threads, as set before the job")
    else:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        threads = max(1, physical_cores() // processes)
        torch.set_num_threads(threads)
        share = f", shared by {processes} processes" if processes > 1 else ""
        _CHOSEN.update(threads=threads, why=f"the physical cores{share}; OMP_NUM_THREADS=N sets another "
                                            "number, and 1 is often faster on a machine busy with other jobs")
    _CHOSEN["sentence"] = threads_line(_CHOSEN)
    return dict(_CHOSEN)


def threads_line(chosen: dict[str, object] | None) -> str:
    if not chosen:
        return ""
    n = chosen["threads"]
    return f"Ran with {n} CPU thread{'s' if n != 1 else ''} ({chosen['why']})."
