"""The block pool (ssmzip/parallel.py): results in submission order from threads
(jobs that release the GIL: the C kernels) and from worker processes (the rest),
the same bytes either way, and an aborted threaded pool that does not wait for
its jobs to finish."""
import time

import pytest

import ssmzip
from conftest import BS, text_sample
from ssmzip import container as C
from ssmzip.engine import codes_without_gil, native, preset_for_level
from ssmzip.parallel import OrderedPool


def _square(x, progress=None):
    return x * x


def _slow(seconds, progress=None):
    """Sleeps in small steps, calling progress between them as the engine does between segments."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
        if progress is not None:
            progress(0)
    return seconds


@pytest.mark.parametrize("gil_free", [True, False])
def test_results_come_back_in_order(gil_free):
    with OrderedPool(2) as pool:
        out = []
        for i in range(9):
            if pool.full():
                out.append(pool.pop())
            pool.submit(_square, i, gil_free=gil_free)
        while len(pool):
            out.append(pool.pop())
        kind = type(pool._executor).__name__
    assert out == [i * i for i in range(9)]
    assert kind == ("ThreadPoolExecutor" if gil_free else "ProcessPoolExecutor")


def test_an_aborted_thread_pool_stops_its_jobs():
    pool = OrderedPool(2)
    for _ in range(3):
        pool.submit(_slow, 30.0, gil_free=True)
    time.sleep(0.2)                                   # two are running on threads now
    t0 = time.monotonic()
    pool.close(abort=True)
    assert time.monotonic() - t0 < 5                  # not 30 s: they stopped at a progress call


def test_one_job_runs_inline_and_starts_nothing():
    with OrderedPool(2) as pool:
        pool.submit(_square, 7, gil_free=False)
        assert pool.pop() == 49
        assert pool._executor is None and pool._ctx is not None    # only the fork server was asked for


@pytest.mark.parametrize("level", [1, 6])
def test_threads_and_processes_give_the_same_bytes(level, backend):
    """backend native: blocks on threads; numba: in worker processes."""
    data = text_sample(5 * BS + 300)
    preset = preset_for_level(level)
    assert codes_without_gil(preset) == (backend == "native")
    one = ssmzip.compress(data, level=level, block_size=BS)
    two = ssmzip.compress(data, level=level, block_size=BS, threads=2)
    assert one == two
    assert ssmzip.decompress(two, threads=2) == data


def _threads_given(x, progress=None, threads=1):
    return x, threads


@pytest.mark.parametrize("total,per_job,workers", [(1, 1, 1), (2, 2, 1), (3, 2, 1), (4, 2, 2)])
def test_a_job_that_takes_two_threads_counts_for_two(total, per_job, workers):
    with OrderedPool(total) as pool:
        out = []
        for i in range(5):
            if pool.full():
                out.append(pool.pop())
            pool.submit(_threads_given, i, threads=2)
        assert (pool.per_job, pool.workers) == (per_job, workers)
        while len(pool):
            out.append(pool.pop())
        assert (pool._executor is None) == (workers == 1)
    assert out == [(i, per_job) for i in range(5)]


def test_the_ssm_levels_never_run_on_threads():
    assert not codes_without_gil(preset_for_level(9))
    if native.cm_kernel() is not None:
        assert codes_without_gil(preset_for_level(6)) and codes_without_gil(preset_for_level(1))


def test_a_bad_block_on_a_thread_is_reported(text):
    data = (text * 2)[:4 * BS]
    preset = preset_for_level(6)
    blocks = [C.compress_block(data[i:i + BS], preset) for i in range(0, len(data), BS)]
    r = blocks[1][0]
    blocks[1] = (C.BlockRecord(r.kind, r.size, r.payload_size, r.crc ^ 1, r.payload_crc), blocks[1][1])
    blob = (C.pack_header(preset, BS) + b"".join(r.pack_header() + p for r, p in blocks)
            + C.pack_trailer([r for r, _ in blocks], len(data)))
    with pytest.raises(ssmzip.SSMZipError, match=r"^block 1: checksum mismatch in decoded data \("):
        ssmzip.decompress(blob, threads=2)
