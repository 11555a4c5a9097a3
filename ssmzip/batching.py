"""Blocks coded in batches on torch (GPU mode): parallel.OrderedPool's interface.

The scale layer's other way to spread blocks: instead of worker processes, one
batch of blocks whose SSMs advance together on torch (ssmzip.gpu). The API's
reader and writer submit container.compress_block and container.decompress_block
jobs as they would to an OrderedPool; this pool holds them until a result is
asked for (or `batch` are waiting), codes the blocks of each kind and preset as
one batch (gpu.coder.encode_blocks / decode_blocks) and hands back, in order, the
same (record, payload) or bytes those functions return. Levels without an SSM
have nothing for torch to do: their jobs run as they are.
"""
from __future__ import annotations

from collections import deque

from . import container
from .engine.native import BackendError

DEFAULT_BATCH = 16        # blocks coded together; each needs its own model memory (Preset.memory_estimate)


def batch_pool(batch: int = DEFAULT_BATCH, device=None) -> "BatchPool":
    """A pool coding blocks `batch` at a time on torch; BackendError without torch."""
    try:
        from .gpu import device as gpu_device  # noqa: F401  (ssmzip.gpu is the package that imports torch)
    except ImportError:
        raise BackendError("GPU mode needs torch: pip install 'ssmzip[gpu]'") from None
    return BatchPool(batch, device)


def _batchable(preset) -> bool:
    return preset.has_ssm and bool(preset.contexts)


class _Job:
    __slots__ = ("fn", "args", "progress", "done", "result")

    def __init__(self, fn, args, progress):
        self.fn, self.args, self.progress = fn, args, progress
        self.done, self.result = False, None


class BatchPool:
    """submit / pop / full / close, as parallel.OrderedPool; `batch` blocks per batch."""

    def __init__(self, batch: int, device=None):
        from .gpu.device import resolve_device
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        self.window = batch
        self.device = resolve_device(device)
        self._pending: deque = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def full(self) -> bool:
        return len(self._pending) >= self.window

    def submit(self, fn, *args, progress=None, gil_free=False, threads=1) -> None:
        # gil_free and threads (OrderedPool's) do not apply: batches run here, on torch
        if fn not in (container.compress_block, container.decompress_block):
            raise ValueError(f"BatchPool cannot batch {fn!r}")
        self._pending.append(_Job(fn, args, progress))

    def pop(self):
        job = self._pending[0]
        if not job.done:
            self._run(list(self._pending))
        self._pending.popleft()
        return job.result

    def _run(self, jobs) -> None:
        """Code every job not yet done: batchable ones of one kind and preset together."""
        groups: dict = {}
        for j in jobs:
            if j.done:
                continue
            encode = j.fn is container.compress_block
            preset = j.args[1] if encode else j.args[3]
            if not _batchable(preset) or (not encode and j.args[1].stored):
                j.result, j.done = j.fn(*j.args, progress=j.progress), True
            else:
                groups.setdefault((encode, preset), []).append(j)
        for (encode, preset), jobs_ in groups.items():
            n = _fitting(preset)
            for k in range(0, len(jobs_), n):
                self._run_batch(encode, preset, jobs_[k:k + n])

    def _run_batch(self, encode, preset, group) -> None:
        from .gpu.coder import decode_blocks, encode_blocks
        if encode:
            payloads = encode_blocks([j.args[0] for j in group], preset, self.device, _progress_of(group))
            for j, payload in zip(group, payloads):
                j.result, j.done = container.block_record(j.args[0], payload), True
        else:
            data = decode_blocks([j.args[2] for j in group], [j.args[1].size for j in group], preset,
                                 self.device, _progress_of(group))
            for j, d in zip(group, data):
                j.result, j.done = container.check_decoded(j.args[0], j.args[1], d), True

    def close(self, abort: bool = False) -> None:
        self._pending.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None)


def _available_memory():
    """Bytes of memory the system can still give (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _fitting(preset) -> int:
    """Blocks of one batch whose models fit in half the memory available now: a
    larger batch (--batch) is coded in parts, the same bytes either way."""
    avail = _available_memory()
    if avail is None:
        return 1 << 30
    return max(1, avail // 2 // preset.memory_estimate())


def _progress_of(jobs):
    """One callback for a batch: every job has coded n bytes (at most its size)."""
    cbs = [(j.progress, len(j.args[0]) if j.fn is container.compress_block else j.args[1].size)
           for j in jobs if j.progress is not None]
    if not cbs:
        return None

    def progress(n):
        for cb, size in cbs:
            cb(min(n, size))
    return progress
