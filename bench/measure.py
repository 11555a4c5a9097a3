"""Run one command as a child process and measure it: wall time, CPU time, peak RSS.

The whole process is timed (start-up, imports and JIT cache loading included):
that is what a user of the command waits for. Peak RSS comes from ``os.wait4``,
i.e. the kernel's accounting of that child; on Linux it is the largest resident
set of the child or of any descendant it waited for, not their sum. Processes
it did not wait for (ssmzip's -T workers, forked by a fork server) are not
counted at all.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass
class Run:
    seconds: float          # wall clock
    cpu_seconds: float      # user + system, the child and its waited-for descendants
    peak_rss: int           # bytes
    returncode: int         # -N: killed by signal N; None never
    timed_out: bool
    stderr: str             # last part of stderr, for error messages

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run(argv, stdin_path=None, stdout_path=None, cwd=None, env=None, timeout=None) -> Run:
    """Run argv with stdin/stdout connected to files (or /dev/null), wait, measure.

    The child gets its own process group, which is killed on timeout or when
    this process is interrupted (so no worker outlives the bench)."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    stderr = tempfile.TemporaryFile()
    timed_out = False
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env,
                                start_new_session=True)

        def kill():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def on_timeout():
            nonlocal timed_out
            timed_out = True
            kill()

        timer = threading.Timer(timeout, on_timeout) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:               # KeyboardInterrupt: take the child down with us
            kill()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)   # tell Popen it is reaped
        stderr.seek(0)
        tail = stderr.read()[-2000:].decode("utf-8", "replace")
    finally:
        for f in (stdin, stdout, stderr):
            if hasattr(f, "close"):
                f.close()
    return Run(seconds=seconds, cpu_seconds=usage.ru_utime + usage.ru_stime,
               peak_rss=usage.ru_maxrss * 1024, returncode=proc.returncode,
               timed_out=timed_out, stderr=tail)


def files_equal(a: str, b: str, chunk: int = 1 << 20) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True
