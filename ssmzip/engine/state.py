"""The state of one block coder: every table, weight and register the model
keeps, preallocated from the preset alone, and the choice of kernel that runs it.

Numba-free on purpose: with the C backend (native.py) levels 1-6 never import
numba, which saves a third of a second at start-up; the numba kernel
(predictor.py) is imported the first time it is needed.
"""
import numpy as np

from . import counters as C
from . import native
from .cm_layout import (APM4_ROWS, APM5_ROWS, APM_POINTS, LEN_BUCKETS, MIXER1_SETS, MIXER1_WIDE_SETS, MIXER2_SETS,
                        MIXER3_SETS, MIXER3_WIDE_SETS, MIXER4_SETS, MIXER5_SETS, N_REGS, R_X2, RUN_COUNT_CLASSES,
                        WEIGHT_ONE)
from .presets import MIXERS_WIDE
from .ssm_layout import F_LAG, F_ROWS, G_LG, N_DIMS, N_LA, init_params, make_context


def aligned_zeros(n: int, dtype, align: int = 64) -> np.ndarray:
    raw = np.zeros(n * np.dtype(dtype).itemsize + align, dtype=np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip:skip + n * np.dtype(dtype).itemsize].view(dtype)


def new_table(n_contexts: int, table_bits: int) -> np.ndarray:
    """Context hash tables (contexts.py): zeroed, aligned to 64 bytes so that
    each 4-slot group is one cache line."""
    return aligned_zeros(n_contexts << table_bits, np.uint8)


def new_weights(n_sets: int, n_inputs: int, init: int) -> np.ndarray:
    return np.full(n_sets * n_inputs, init, dtype=np.int32)


def new_apm(n_contexts: int) -> np.ndarray:
    """An APM's points as differences from where they start (mixer.py): zeros."""
    return np.zeros(n_contexts * APM_POINTS, dtype=np.int32)


class BlockState:
    """All state of one block coder: preallocated arrays, sized by the preset only."""

    def __init__(self, preset, ssm_feed=None, threads: int = 1, ssm_steps: str = "native"):
        """ssm_feed: the SSM's logits come from outside (ssmzip.gpu.feed.Feed: an
        SSM run on torch) and the C kernel reads them; the numba SSM is not built.
        threads: how many threads this block may use; with two, the C kernel and a
        lagged SSM (Preset.ssm_lag), the SSM learns on a second thread.
        ssm_steps: under the C kernel, "native" runs the SSM in C (native/ssm_step.c),
        "numba" in numba (ssm_callbacks.py: the reference, for tests); same bits."""
        n = len(preset.contexts)
        n_in = preset.mixer_inputs()
        wide = preset.mixer_design == MIXERS_WIDE
        self.preset = preset
        self.regs = np.zeros(N_REGS, dtype=np.int64)
        self.regs[R_X2] = 0xFFFFFFFF
        self.kinds = np.array(preset.contexts, dtype=np.int64)
        self.table = new_table(n, preset.table_bits)
        self.slots = np.zeros(n, dtype=np.int64)
        self.hashes = np.zeros(n, dtype=np.int64)
        init = C.state_map_init()
        match_init = np.full(LEN_BUCKETS * 2 * 256, 1 << 21, dtype=np.int32)
        self.sm_p = np.concatenate([np.tile(init, n), match_init]).astype(np.int32)
        self.sm_n = np.zeros(self.sm_p.shape[0], dtype=np.int32)
        run_entries = (n << (preset.table_bits - 4)) if preset.runs else 1
        self.runs = np.zeros(run_entries, dtype=np.uint32)
        self.rsm_p = np.full(n * RUN_COUNT_CLASSES * 2, 1 << 21, dtype=np.int32)
        self.rsm_n = np.zeros(self.rsm_p.shape[0], dtype=np.int32)
        self.run_state = np.zeros((5, n), dtype=np.int64)
        self.mindex = np.zeros(1 << preset.match_bits, dtype=np.int32)
        self.o0 = np.full(256, 1 << 15, dtype=np.int32)
        self.ind = np.zeros(256 + 65536, dtype=np.int32)   # indirect: byte histories after 1 and 2 bytes
        w0 = WEIGHT_ONE // 4
        self.w1 = new_weights(MIXER1_WIDE_SETS if wide else MIXER1_SETS, n_in, w0)
        self.w2 = new_weights(MIXER2_SETS if preset.mixers > 1 else 1, n_in, w0)
        self.w3 = new_weights((MIXER3_WIDE_SETS if wide else MIXER3_SETS) if preset.mixers > 2 else 1, n_in, w0)
        self.w4 = new_weights(MIXER4_SETS if preset.mixers > 3 else 1, n_in, w0)
        self.w5 = new_weights(MIXER5_SETS if preset.mixers > 4 else 1, n_in, w0)
        self.wf = new_weights(256, preset.mixers + 1, WEIGHT_ONE // preset.mixers)
        self.x = np.zeros(n_in, dtype=np.int32)
        self.xf = np.zeros(6, dtype=np.int32)
        self.apm1 = new_apm(256)
        self.apm2 = new_apm(1 << 16)
        self.apm3 = new_apm(1 << (preset.apm3_bits + 8) if preset.apms > 2 else 1)
        self.apm4 = new_apm(APM4_ROWS if preset.apms > 3 else 1)
        self.apm5 = new_apm(APM5_ROWS if preset.apms > 4 else 1)
        self._init_ssm(preset if ssm_feed is None else None)
        self._native = native.cm_kernel() if preset.contexts else None   # the SSM alone: numba
        self._segment = None
        if ssm_feed is not None:
            if self._native is None or not preset.has_ssm:
                raise native.BackendError("an SSM computed elsewhere needs the C library and "
                                          "context models (a level with an SSM)")
            self.ssm_callbacks, self.ssm_ctx = ssm_feed, ssm_feed.ctx
        elif self._native is not None and preset.has_ssm:
            if ssm_steps == "numba":                      # tests: numba's SSM under the C kernel
                from . import ssm_callbacks
                self.ssm_callbacks = ssm_callbacks
            else:
                self.ssm_callbacks = native.ssm_steps()    # native/ssm_step.c: no numba at all
            self.ssm_ctx = make_context(self)
            if threads >= 2 and preset.ssm_lag:
                self._second_set()
                self.ssm_ctx2 = make_context(self, second=True)
                self.ssm_side = np.zeros(1, dtype=np.int64)    # which set codes now (native/cm.c)

    def _init_ssm(self, preset):
        """The SSM's arrays (parameters, gradients, Adam's second moments,
        activations, scratch, n-gram tables); tiny placeholders when the preset
        has none or is None (the kernel takes them either way)."""
        if preset is not None and preset.has_ssm:
            sh = preset.ssm_shape()
            self.sP = init_params(sh, preset.ssm_seed)
            self.slay, self.salay, self.sdims = sh.lay, sh.act_lay, sh.dims
            self.sA = np.zeros(sh.n_act, dtype=np.float32)
            self.sS = np.zeros(sh.n_scratch, dtype=np.float32)
            self.sib = np.zeros(sh.di, dtype=np.int32)
            self.stok = np.zeros(sh.chunk + 1, dtype=np.int64)
            self.srows = np.zeros(sh.chunk * max(sh.ngram, 1), dtype=np.int64)
            self.sNE = np.zeros(sh.n_ngram, dtype=np.float32)      # n-gram embeddings start at zero
            self.sNV = np.zeros(sh.n_ngram, dtype=np.float32)
            lr = np.float32(preset.ssm_lr) / np.float32(100000.0)     # exact IEEE division
            staged = sh.chunk * sh.ngram if preset.ssm_lag else 0
            # a lagged SSM's second parameter array and its staged n-gram rows (ssm.py)
            self.sPn = self.sP.copy() if preset.ssm_lag else np.zeros(1, dtype=np.float32)
            self.sstage = np.zeros(max(1, staged * sh.dm), dtype=np.float32)
            self.sflag = np.zeros(F_ROWS + staged, dtype=np.int64)
            self.sflag[F_LAG] = preset.ssm_lag
        else:
            self.sP = np.zeros(1, dtype=np.float32)
            self.slay = self.salay = np.zeros(N_LA + G_LG + 1, dtype=np.int64)   # s_lg reads one
            self.sdims = np.zeros(N_DIMS, dtype=np.int64)
            self.srows = np.zeros(1, dtype=np.int64)
            self.sNE = np.zeros(1, dtype=np.float32)
            self.sNV = np.zeros(1, dtype=np.float32)
            self.sA = np.zeros(1, dtype=np.float32)
            self.sS = np.zeros(1, dtype=np.float32)
            self.sib = np.zeros(1, dtype=np.int32)
            self.stok = np.zeros(1, dtype=np.int64)
            self.sPn = np.zeros(1, dtype=np.float32)
            self.sstage = np.zeros(1, dtype=np.float32)
            self.sflag = np.zeros(F_ROWS, dtype=np.int64)
            lr = np.float32(0.0)
        self.slr = np.array([lr], dtype=np.float32)    # an array: the C kernel's callbacks read it
        self.sG = np.zeros_like(self.sP)
        self.sV = np.zeros_like(self.sP)
        self.sopt = np.ones(2, dtype=np.float32)
        # native/ssm.c's matrix loops for the SSM (zeros: numba's own), with the C kernel only
        self.skern = native.ssm_kernels()

    def _second_set(self):
        """A second set of the SSM's per-chunk buffers (ssm_layout.SECOND_SET): the
        learning thread reads one chunk's while the kernel writes the next one's."""
        self.sA2 = np.zeros_like(self.sA)
        self.stok2 = np.zeros_like(self.stok)
        self.srows2 = np.zeros_like(self.srows)
        self.sS2 = np.zeros_like(self.sS)
        self.sib2 = np.zeros_like(self.sib)

    def run(self, mode, buf, start, end, io):
        """Code buf[start:end] (ENCODE: into io; DECODE: from io), continuing from
        where the previous segment stopped."""
        if self._native is not None:
            # the segment's arguments are built once per buffer: a decoder fed from
            # outside calls this for every byte
            seg = self._segment
            if seg is None or seg.key != (mode, id(buf), id(io)):
                seg = native.make_segment(self, C.SQUASH, C.STRETCH, C.STATE_NEXT, C.STATE_PRIORITY,
                                          C.RECIPROCAL, mode, buf, io)
                seg.key, seg.arrays = (mode, id(buf), id(io)), (buf, io)
                self._segment = seg
            native.run(self._native, seg, start, end)
            return
        from .predictor import _code_segment     # numba: imported only when it codes
        p = self.preset
        _code_segment(mode, buf, start, end, io, self.regs, self.kinds, p.table_bits, p.runs,
                      p.match_min, p.mixers, p.mixer_lr, p.final_lr, p.apms, p.apm_rate,
                      p.mixer_skip, p.apm_first, p.mixer_design,
                      self.table, self.slots, self.hashes, self.sm_p, self.sm_n,
                      self.runs, self.rsm_p, self.rsm_n, self.run_state,
                      self.mindex, self.o0, self.ind, self.w1, self.w2, self.w3, self.w4, self.w5, self.wf,
                      self.x, self.xf, self.apm1, self.apm2, self.apm3, self.apm4, self.apm5,
                      C.SQUASH, C.STRETCH, C.STATE_NEXT, C.STATE_PRIORITY, C.RECIPROCAL,
                      p.has_ssm, self.sP, self.sPn, self.sG, self.sV, self.sopt, self.slay,
                      self.sA, self.salay, self.sdims, self.sS, self.sib, self.stok, self.slr[0],
                      self.sNE, self.sNV, self.srows, self.sflag, self.sstage, self.skern)


