"""The CPUs this process may use, and the thread pool that solves a batch's conditions side by
side.

The compiled Rodas5P kernels (:mod:`ude.model.rodas_kernels`) solve each condition alone, with
its own step size, and run outside the GIL: the conditions of one solve can run in threads,
one per CPU, and give the same numbers to the bit as one after the other (each condition's
solve reads the shared tapes and writes only its own arrays). The distillation's selection
already runs a step's refits in threads (:class:`ude.distill.selection.TrajectorySelector`);
this pool also covers the solves that run one at a time with several conditions: the stiff
training's, a single refit's (the final one), a member per row of an ensemble's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM task's share, not the node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _row_pool() -> ThreadPoolExecutor | None:
    """The process's pool, one thread per usable CPU (None on one CPU). A forked child (a
    launcher's worker) has none of its parent's threads: it makes its own."""
    global _pool, _pool_pid
    with _pool_lock:  # the selection's refit threads may ask for it at the same time
        if _pool is None or _pool_pid != os.getpid():
            cpus = usable_cpus()
            _pool = ThreadPoolExecutor(cpus, thread_name_prefix="ude-rows") if cpus > 1 else None
            _pool_pid = os.getpid()
        return _pool


def map_rows(solve: Callable[[int], object], n_rows: int) -> list:
    """``[solve(0), ..., solve(n_rows - 1)]``, in threads when there are two rows or more and
    more than one CPU. ``solve`` must release the GIL for the threads to gain (a numba kernel
    compiled ``nogil``) and must not itself wait on this pool."""
    pool = _row_pool() if n_rows > 1 else None
    if pool is None:
        return [solve(b) for b in range(n_rows)]
    return list(pool.map(solve, range(n_rows)))
