"""The optional C backend: native/cm.c, built by `pip install` as ssmzip/_native*.so.

It codes a segment of a block with the same model as predictor._code_segment,
bit for bit; at levels 7-9 it runs the SSM through native/ssm_step.c (ssm_steps
below: the per-byte steps, Adam, the n-gram step), which calls native/ssm.c's
forward pass and native/ssm_backward.c's backward pass, so that numba is never
imported. The numba backend's SSM calls the same forward and backward passes
(ssm_kernels below). The SSM-only ablation (no context models) runs on numba.
Python calls it once per segment (64 KiB) through ctypes, so the per-call
cost does not matter. native/bwt.c codes level 1's blocks (the BWT and its
model, called by bwt_block.py, one call per block).

SSMZIP_BACKEND=numba forces the numba kernels, SSMZIP_BACKEND=native makes a
missing library an error instead of a silent fallback; unset (or "auto") uses
the library when it is there.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path

import numpy as np

ENV = "SSMZIP_BACKEND"
ABI = 14                   # native/cm.c's SSMZIP_ABI: the layout of Segment below, ssm.c, ssm_backward.c, ssm_step.c, ecsq.c, split.c, split_encode.c and bwt.c present
_c_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p

# (name, ctypes type), in the order of the C struct `Segment` in native/cm.c.
_SCALARS = ("mode", "start", "end", "io_len", "n_ctx", "table_bits", "use_runs", "match_min",
            "n_mixers", "lr", "final_lr", "n_apms", "apm_rate", "match_mask", "n_states",
            "mixer_skip", "apm_first", "apm3_bits", "mixer_design")
_POINTERS = ("buf", "io", "regs", "kinds", "slots", "hashes", "run_state", "table", "sm_p", "sm_n",
             "runs", "rsm_p", "rsm_n", "mindex", "o0", "ind", "w1", "w2", "w3", "wf", "x", "xf",
             "apm1", "apm2", "apm3", "sq", "st", "state_next", "priority", "recip", "w4", "w5", "apm4", "apm5")
# those that are not the model's own arrays (make_segment passes them in)
_SHARED = ("buf", "io", "sq", "st", "state_next", "priority", "recip")


# the SSM's callbacks and, for one learning on a second thread, its second buffer set
_SSM_FIELDS = [("use_ssm", _c_i64), ("ssm_ctx", _ptr), ("ssm_byte", _ptr), ("ssm_bit", _ptr), ("ssm_end", _ptr),
               ("ssm_chunk", _c_i64), ("ssm_ctx2", _ptr), ("ssm_side", _ptr), ("ssm_turn", _ptr), ("ssm_learn", _ptr)]


class Segment(ctypes.Structure):
    _fields_ = [(n, _c_i64) for n in _SCALARS] + [(n, _ptr) for n in _POINTERS] + _SSM_FIELDS


class BackendError(RuntimeError):
    """SSMZIP_BACKEND asks for something this installation cannot give."""


def _library_path() -> Path | None:
    pkg = Path(__file__).resolve().parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = pkg / f"_native{suffix}"
        if p.is_file():
            return p
    return None


def _load():
    global _LIB
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "numba", "native"):
        raise BackendError(f"{ENV} must be numba, native or auto, not {choice!r}")
    if choice == "numba":
        return None, "numba (forced by SSMZIP_BACKEND)"
    path = _library_path()
    err = "was not built at install time (no C compiler?)"
    if path is not None:
        try:
            lib = ctypes.CDLL(str(path))
            lib.ssmzip_native_abi.restype = _c_i64
            if lib.ssmzip_native_abi() != ABI:
                raise AttributeError("it is out of date (rebuild it: pip install .)")
            fn = lib.ssmzip_cm_segment
            fn.argtypes = [ctypes.POINTER(Segment)]
            fn.restype = _c_i64
            _LIB = lib
            return fn, "native C (level 1's BWT, the context models, the SSM)"
        except (OSError, AttributeError) as e:
            err = f"cannot be used: {e}"
    if choice == "native":
        raise BackendError(f"{ENV}=native but the C library {err}")
    return None, f"numba: the C library {err}"


_FN, DESCRIPTION = None, ""
_LIB = None
_loaded = False


def cm_kernel():
    """The C segment function, or None when numba is to be used."""
    global _FN, DESCRIPTION, _loaded
    if not _loaded:
        _FN, DESCRIPTION = _load()
        _loaded = True
    return _FN


def library():
    """The loaded C library (ctypes CDLL), or None when numba is to be used."""
    cm_kernel()
    return _LIB


def bind(signatures: dict):
    """A namespace of the library's functions with their ctypes signatures
    ({name: (argtypes, restype)}), or None when numba is to be used."""
    lib = library()
    if lib is None:
        return None
    ns = type("Kernels", (), {})()
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
        setattr(ns, name, fn)
    return ns


SSM_KERNELS = ("acc_outer", "back_mat", "matvec", "scan_back", "ssm_forward", "ssm_backward")   # ssm.K_OUTER .. K_BACKWARD


def ssm_kernels() -> np.ndarray:
    """The addresses of native/ssm.c's kernels for the SSM (ssm.K_OUTER .. ssm.K_BACKWARD:
    SSM_KERNELS), or zeros when numba is to be used."""
    kern = np.zeros(len(SSM_KERNELS), dtype=np.int64)
    if cm_kernel() is not None:
        kern[:] = [ctypes.cast(getattr(_LIB, f"ssmzip_{n}"), _ptr).value for n in SSM_KERNELS]
    return kern


class _Address:
    """A C function's address, as numba's cfuncs give theirs (`.address`)."""

    def __init__(self, address: int):
        self.address = address


SSM_STEPS = ("ssm_byte", "ssm_bit", "ssm_end", "ssm_record", "ssm_turn", "ssm_learn")   # native/ssm_step.c


def ssm_steps():
    """native/ssm_step.c's per-byte steps of the SSM under the names of
    ssm_callbacks.py's (ssm_learn as ssm_learn_cb), or None when numba is to be used."""
    if cm_kernel() is None:
        return None
    ns = type("SSMSteps", (), {})()
    for n in SSM_STEPS:
        setattr(ns, "ssm_learn_cb" if n == "ssm_learn" else n,
                _Address(ctypes.cast(getattr(_LIB, f"ssmzip_{n}"), _ptr).value))
    return ns


def describe() -> str:
    """Which backend codes here, in words (for --version)."""
    try:
        cm_kernel()
    except BackendError as e:
        return str(e)
    return DESCRIPTION


def address(a: np.ndarray) -> int:
    """The address of a C-contiguous array (cheaper than a.ctypes.data)."""
    assert a.flags.c_contiguous
    return a.__array_interface__["data"][0]


def make_segment(model, sq, st, state_next, priority, recip, mode, buf, io) -> Segment:
    """The C kernel's arguments for coding `buf` with `model` (a state.BlockState);
    `run` sets the range. The arrays must outlive it."""
    p = model.preset
    seg = Segment(mode=mode, io_len=io.shape[0], n_ctx=len(p.contexts),
                  table_bits=p.table_bits, use_runs=p.runs, match_min=p.match_min, n_mixers=p.mixers,
                  lr=p.mixer_lr, final_lr=p.final_lr, n_apms=p.apms, apm_rate=p.apm_rate,
                  match_mask=model.mindex.shape[0] - 1, n_states=priority.shape[0],
                  mixer_skip=p.mixer_skip, apm_first=p.apm_first, apm3_bits=p.apm3_bits, mixer_design=p.mixer_design,
                  buf=address(buf), io=address(io), sq=address(sq), st=address(st), state_next=address(state_next),
                  priority=address(priority), recip=address(recip),
                  **{n: address(getattr(model, n)) for n in _POINTERS if n not in _SHARED})
    if p.has_ssm:
        cb = model.ssm_callbacks
        seg.use_ssm = 1
        seg.ssm_ctx = address(model.ssm_ctx)
        seg.ssm_byte, seg.ssm_bit, seg.ssm_end = cb.ssm_byte.address, cb.ssm_bit.address, cb.ssm_end.address
        if getattr(model, "ssm_ctx2", None) is not None:     # a lagged SSM learning on a second thread
            seg.ssm_end = cb.ssm_record.address
            seg.ssm_chunk = p.ssm_chunk
            seg.ssm_ctx2, seg.ssm_side = address(model.ssm_ctx2), address(model.ssm_side)
            seg.ssm_turn, seg.ssm_learn = cb.ssm_turn.address, cb.ssm_learn_cb.address
    return seg


def run(fn, seg: Segment, start: int, end: int) -> None:
    """Code buf[start:end] (the buffer of make_segment), continuing the model's state."""
    seg.start, seg.end = start, end
    if fn(ctypes.byref(seg)) != 0:
        raise ValueError("the C kernel refused the preset")
