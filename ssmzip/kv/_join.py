"""Joining many pieces into one bytes object, on several threads.

A fresh bytes object of tens of MB takes thousands of page faults as it is
first written; b"".join does that and the copying on one thread, which the
other threads of a multi-threaded encode wait for (MiniLM's archive, 30 MB:
3-15 ms of a 45 ms encode on two threads). Here C threads (native/split.c,
ssmzip_gather) copy equal shares of the output into a bytes object made by
the C API's PyBytes_FromStringAndSize(NULL, n), its way of building one in
place. b"".join is used when there is one thread, little data, or no C
library.
"""
import ctypes

import numpy as np

from ssmzip.engine import native as _nat
from ssmzip.engine.native import address as _p

THREADED_MIN = 1 << 22  # bytes from which the join runs on threads

_API = None


def _api():
    """(gather, new bytes, bytes buffer address) or False."""
    global _API
    if _API is None:
        _API = False
        lib = _nat.bind({"ssmzip_gather": ([ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_int64], None)})
        try:
            make = ctypes.pythonapi.PyBytes_FromStringAndSize
            buf = ctypes.pythonapi.PyBytes_AsString
        except AttributeError:  # not CPython
            lib = None
        if lib is not None:
            make.argtypes, make.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
            buf.argtypes, buf.restype = [ctypes.py_object], ctypes.c_void_p
            _API = (lib.ssmzip_gather, make, buf)
    return _API


def join(pieces, threads=1):
    """b"".join(pieces) (bytes-like pieces), on `threads` threads when it pays."""
    arrays = [np.frombuffer(p, np.uint8) for p in pieces]
    total = sum(a.shape[0] for a in arrays)
    api = _api() if threads > 1 and total >= THREADED_MIN else False
    if not api:
        return b"".join(pieces)
    gather, make, buf = api
    out = make(None, total)
    src = np.array([_p(a) if a.shape[0] else 0 for a in arrays], np.uint64)
    lens = np.array([a.shape[0] for a in arrays], np.int64)
    gather(len(arrays), _p(src), _p(lens), buf(out), int(threads))
    return out
