"""Blocks over workers: run independent jobs in parallel, in order.

Blocks are coded independently, so the output is the same whatever the
number of workers: results always come back in submission order. At most
``2 * workers`` jobs are in flight, which bounds memory by a few blocks, not
the file size. Workers are started only once a second job shows up, so a
one-block input never waits for one to start.

A job that releases the GIL while it works (the C kernels, which Python calls
through ctypes a segment or a block at a time) runs on threads of this
process: nothing to start, import or pickle. Other jobs (numba, the SSM) run in
worker processes started from a fork server, which is started in the
background with the first job so that its imports overlap the input's reading.
A job that keeps two threads busy (a block whose SSM learns beside the coding)
counts for two of the pool's threads.
"""
from __future__ import annotations

import functools
import os
import signal
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from concurrent.futures import Executor
# multiprocessing and concurrent.futures are imported when a pool starts: a
# one-block run never needs them (30 ms of a level-1 run's start-up).


def available_cores() -> int:
    """Cores this process may run on (respects affinity masks and cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int) -> int:
    """``threads`` as a worker count: 0 means every available core."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0, got {threads!r}")
    return available_cores() if threads == 0 else threads


def _context():
    """forkserver where there is one (POSIX), else spawn.

    Both start workers from a clean process, safe whatever threads the parent
    runs (tqdm's monitor, the caller's). The fork server imports ssmzip once,
    and every later worker forks from it already initialised, so a pool
    starts in a fraction of a second instead of importing numba per worker.
    """
    import multiprocessing
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(["ssmzip.container", "ssmzip._worker_preload"])
    return ctx


def _prestart(ctx) -> None:
    """Start the fork server now without waiting for it: it imports ssmzip while
    this process goes on (reading input), instead of when the second job comes
    (measured: a third of a second saved in a 4-second two-worker run)."""
    if ctx.get_start_method() != "forkserver":
        return
    try:
        from multiprocessing import forkserver
        forkserver.ensure_running()
    except Exception:   # not fatal: the pool starts it itself when it needs it
        pass


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and stops
    # the workers, which must not print tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Deferred:
    """A job not yet started: run inline if it turns out to be the only one."""

    __slots__ = ("fn", "args", "progress")

    def __init__(self, fn, args, progress):
        self.fn, self.args, self.progress = fn, args, progress

    def run_inline(self):
        return self.fn(*self.args, progress=self.progress)


class _Cancelled(Exception):
    """Raised inside a threaded job once its pool is closed with abort."""


def _cancellable(cancel, fn, args):
    """Run fn(*args) on a worker thread; its progress callback (called between
    segments) stops it soon after the pool is aborted, so that an interrupted
    run does not wait for whole blocks to finish."""
    def check(_done):
        if cancel.is_set():
            raise _Cancelled
    return fn(*args, progress=check)


class OrderedPool:
    """Submit jobs, pop results in submission order.

    ``submit(fn, *args, progress=cb, gil_free=False, threads=1)`` queues ``fn(*args)``;
    ``fn`` must be a picklable top-level function accepting a ``progress``
    keyword. ``progress`` is only passed when the job runs inline (workers do
    not call back), so callers must account for a job's work when they pop its
    result. ``gil_free`` says that fn releases the GIL while it works: the pool
    then runs it on threads. ``threads`` > 1 says that one job can keep that many
    threads busy: the pool runs fewer jobs at once (the pool's threads in all)
    and passes fn a ``threads`` keyword, how many it may use. Every job of one
    pool must say the same.
    ``pop()`` waits for the oldest job and returns its result or raises its
    exception. Callers keep ``len(pool) < pool.window`` before submitting
    (``full()``) to bound memory.
    """

    def __init__(self, threads: int = 1):
        self.threads = resolve_threads(threads)
        self.workers = self.threads           # jobs at once; fewer when a job takes several threads
        self.per_job = 1
        self.window = 2 * self.workers if self.workers > 1 else 1
        self._pending: deque = deque()
        self._executor: Optional[Executor] = None
        self._ctx = None
        self._cancel = None               # threads: set to stop the running jobs

    def __len__(self) -> int:
        return len(self._pending)

    def full(self) -> bool:
        return len(self._pending) >= self.window

    def submit(self, fn: Callable, *args, progress=None, gil_free: bool = False, threads: int = 1) -> None:
        if threads > 1 and self.per_job == 1 and self._executor is None and not self._pending:
            self.per_job = min(threads, self.threads)
            self.workers = max(1, self.threads // self.per_job)
            self.window = 2 * self.workers if self.workers > 1 else 1
        if self.per_job > 1:
            fn = functools.partial(fn, threads=self.per_job)
        job = _Deferred(fn, args, progress)
        if self.workers <= 1 or (self._executor is None and not self._pending):
            self._pending.append(job)
            if self.workers > 1 and not gil_free and self._ctx is None:
                self._ctx = _context()
                _prestart(self._ctx)
            return
        if self._executor is None:
            self._start(gil_free)
        self._pending.append(self._send(fn, args))

    def _start(self, gil_free: bool) -> None:
        if gil_free:
            import threading
            from concurrent.futures import ThreadPoolExecutor
            self._cancel = threading.Event()
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ssmzip-block")
        else:
            from concurrent.futures import ProcessPoolExecutor
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=self._ctx or _context(), initializer=_worker_init)
        # The job held back while we did not know whether there would be a
        # second one goes to the pool too.
        self._pending = deque(self._send(j.fn, j.args) if isinstance(j, _Deferred) else j
                              for j in self._pending)

    def _send(self, fn, args):
        if self._cancel is not None:
            return self._executor.submit(_cancellable, self._cancel, fn, args)
        return self._executor.submit(fn, *args)

    def pop(self):
        job = self._pending.popleft()
        if isinstance(job, _Deferred):
            return job.run_inline()
        from concurrent.futures.process import BrokenProcessPool
        try:
            return job.result()
        except BrokenProcessPool:
            raise RuntimeError("a worker process exited unexpectedly (killed, or out of memory?)") from None

    def close(self, abort: bool = False) -> None:
        """Release the workers. With ``abort``, drop queued jobs and stop running ones."""
        self._pending.clear()
        ex, self._executor = self._executor, None
        if ex is None:
            return
        if not abort:
            ex.shutdown(wait=True)
            return
        if self._cancel is not None:      # threads: each stops at its next segment
            self._cancel.set()
            ex.shutdown(wait=True, cancel_futures=True)
            return
        ex.shutdown(wait=False, cancel_futures=True)
        # A running job can take minutes (a large block); do not leave it
        # computing for nobody. Python >= 3.14 has a public way to do this.
        kill = getattr(ex, "terminate_workers", None)
        if kill is not None:
            kill()
            return
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            try:
                proc.terminate()
            except Exception:  # already gone
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None)
