"""Lossless float codec for one chunk of elements: field split + rANS.

Each element (bf16, fp16, fp32, fp8 word) is split into a symbol (the
exponent and the ``k`` leading mantissa bits, ``k`` chosen per chunk) and raw
bits (sign and the other mantissa bits). The symbols are rANS coded with one
static model per chunk, or, when the caller gives a channel period ``C`` (the
tensor's last dimension), with up to 32 models, each used by a group of
channels (channels grouped by k-means on their symbol histograms); whichever
is smaller. The raw bits are stored as they are. See FORMAT.md, "split chunk".

With the C library built, a chunk is encoded in one call
(native/split_encode.c) and decoded in one call (native/split.c); without
it, the steps here run on the numba kernels of _rans.py. Both give the same
bytes; the Python steps are the reference.
"""
import ctypes
import math
import threading

import numpy as np

from ssmzip.engine import native as _nat
from ssmzip.engine.native import address as _p
from ssmzip.errors import SSMZipError
from ssmzip.kv import _rans
from ssmzip.kv._io import Reader, varint

#: name -> (word bits W, exponent bits E, word dtype)
FLOAT_SPECS = {
    "float32": (32, 8, np.uint32),
    "float16": (16, 5, np.uint16),
    "bfloat16": (16, 8, np.uint16),
    "float8_e4m3fn": (8, 4, np.uint8),
    "float8_e5m2": (8, 5, np.uint8),
}

LANES = 32          # rANS lanes of the streams written (8 in files before archive version 3)
LANES32_FLAG = 0x80  # in the chunk's first byte (with S): its streams have 32 lanes, else 8
KMAX = 3            # mantissa bits that may join the exponent in the symbol
MAX_SYMBOLS = 256   # distinct symbols per chunk (index fits the table entry)
MAX_TABLES = 64     # decoder limit (the encoder uses at most 32)
GROUP_CHOICES = (8,)      # channel groups tried (4 as well: 0.007 % smaller, 20 % slower on MiniLM)
SAMPLE_ROWS = 256          # rows sampled to cluster channels
CLUSTER_ITERS = 2          # k-means passes
# try channel groups only if per-channel tables could save 2.5 % of the symbol bits (on the
# sample): MiniLM's weight matrices show 0.8-2.2 % and never gain from groups (8 groups
# realise a third of the bound at best), SmolLM2's K/V 2.6-12 % and gain 0.2-3.5 %
GROUP_MIN_GAIN = 0.025
MIN_ROWS = 32       # channel models only when each channel has this many elements
PART_SAMPLE = 1 << 16  # raw-bit values looked at before deciding a part is incompressible
MAX_CHANNELS = 1 << 16
_TABLE_BITS_PER_SYMBOL = 11.0   # rough cost of one stored frequency (model selection only)


_NATIVE = None


def native():
    """The C kernels (native/split.c) or None when numba is to be used."""
    global _NATIVE
    if _NATIVE is None:
        P, I = ctypes.c_void_p, ctypes.c_int64
        _NATIVE = _nat.bind({
            "ssmzip_split_hist": ([P, I, I, I, I, P], I),
            "ssmzip_split_hist_channels": ([P, I, I, I, I, I, I, P, I, P], None),
            "ssmzip_split_hist_groups": ([P, I, I, I, I, I, P, P, I, I, P], I),
            "ssmzip_split_rest": ([P, I, I, I, I, I, I, P], None),
            "ssmzip_split_pack_top": ([P, I, I, I, I, I, P], I),
            "ssmzip_split_pack_bits": ([P, I, I, P], I),
            "ssmzip_split_encode": ([P, I, I, I, I, I, P, P, P, I, I, I, P, P, I], I),
            "ssmzip_split_decode": ([P, I, I, P, P, P, I, I, P, P, I, I, I, P, I, I, P, I, I], I),
            "ssmzip_split_simd": ([I], I),
            "ssmzip_split_decode_payload": ([P, I, I, I, P, I, P], I),
            "ssmzip_xxh64": ([P, I], ctypes.c_uint64),
            "ssmzip_split_decode_many": ([I, P, P, P, P, P, P, P, P, I], None),
            "ssmzip_split_encode_many": ([I, P, P, I, I, P, I, P, P, P, I, P, P, P, P, I], I),
        }) or False
    return _NATIVE or None


_LOCAL = threading.local()


def _scratch(key, n, dtype):
    """A per-thread array of n elements, reused from call to call (contents
    undefined), for buffers that do not outlive one call: fresh large arrays
    cost page faults every time."""
    need = max(1, n) * np.dtype(dtype).itemsize
    buf = getattr(_LOCAL, key, None)
    if buf is None or buf.nbytes < need:
        buf = np.empty(need + (need >> 3), np.uint8)
        setattr(_LOCAL, key, buf)
    return buf[:need].view(dtype)[:n]


def _hist(words, rbits, smask):
    """int64[smask + 1]: counts of the symbols (w >> rbits) & smask."""
    nat = native()
    h = np.zeros(smask + 1, np.int64)
    if nat is not None:
        if nat.ssmzip_split_hist(_p(words), words.shape[0], words.itemsize, rbits, smask, _p(h)) < 0:
            raise MemoryError("symbol histogram")
        return h
    hist4 = np.zeros((4, smask + 1), np.int64)
    _rans.hist_symbols(words, rbits, smask, hist4)
    return hist4.sum(axis=0)


def _layout(W, S):
    """(R, nbytes, mbits): R low mantissa bits below the symbol; raw bits R + 1
    stored as nbytes whole bytes plus mbits bit-packed bits per element."""
    R = W - 1 - S
    return R, (R + 1) // 8, (R + 1) % 8


def rest_size(n, W, S):
    _, nbytes, mbits = _layout(W, S)
    return n * nbytes + (n * mbits + 7) // 8


def _quantized_bits(counts):
    """(exact bits of counts coded with their own 12-bit quantised frequencies, those frequencies)."""
    f = np.zeros(counts.shape[0], np.uint32)
    return _rans.quantized_bits(np.ascontiguousarray(counts, np.int64), f), f


def _runs(used):
    """Sorted symbol values -> list of (start, length) runs."""
    runs = []
    start = prev = int(used[0])
    for v in used[1:]:
        v = int(v)
        if v != prev + 1:
            runs.append((start, prev - start + 1))
            start = v
        prev = v
    runs.append((start, prev - start + 1))
    return runs


def choose_model(words, W, E, C=1):
    """Pick (S, used symbols, per-table freqs, ctxmap or None) for one chunk.

    S: the k (0..3) leading mantissa bits that join the exponent are those
    that minimise order-0 symbol bits + raw bits + table. Then, if the data
    has a channel period C (rows x C), up to 8 channel groups with their own
    tables are tried (channels clustered on a sample of rows), and kept when
    their exact size (tables included) beats the single table.
    """
    n = words.shape[0]
    kmax = min(KMAX, W - 1 - E)
    S0 = E + kmax
    R0 = W - 1 - S0
    h0 = _hist(words, R0, (1 << S0) - 1)
    best = None
    for k in range(kmax + 1):
        S = E + k
        hk = h0.reshape(1 << S, 1 << (kmax - k)).sum(axis=1) if k < kmax else h0
        nsym = np.count_nonzero(hk)
        if nsym > MAX_SYMBOLS:
            continue
        cost = _rans.entropy_bits(hk) + n * (W - S) + nsym * _TABLE_BITS_PER_SYMBOL
        if best is None or cost < best[0]:
            best = (cost, S, hk)
    if best is None:  # more than 256 exponent values: cannot happen for E <= 8
        raise ValueError("too many symbols")
    _, S, hk = best
    used = np.flatnonzero(hk)
    single, freqs = _quantized_bits(hk[used])
    single += used.shape[0] * _TABLE_BITS_PER_SYMBOL
    freqs = freqs.reshape(1, -1)
    ctxmap = None
    nsym = used.shape[0]
    rows = n // C if C > 1 else 0
    if C > 1 and C <= MAX_CHANNELS and n % C == 0 and rows >= MIN_ROWS and nsym > 1:
        R = W - 1 - S
        remap = np.zeros(1 << S, np.int32)
        remap[used] = np.arange(nsym, dtype=np.int32)
        step = max(1, rows // SAMPLE_ROWS)
        nrows = (rows + step - 1) // step
        hist = np.zeros((C, nsym), np.int32)
        nat = native()
        if nat is not None:
            nat.ssmzip_split_hist_channels(_p(words), nrows, step * C, C, words.itemsize, R, (1 << S) - 1,
                                           _p(remap), nsym, _p(hist))
        else:
            _rans.hist_channels2d(words.reshape(rows, C)[::step], R, (1 << S) - 1, remap, hist)
        scale = rows / nrows
        # what per-channel tables could save at most, against the cheapest grouped model's side cost
        bound = single - scale * _rans.channel_bits(hist, _rans.NLOGN)
        if bound > max(GROUP_CHOICES[0] * nsym * _TABLE_BITS_PER_SYMBOL + C * 8, GROUP_MIN_GAIN * single):
            best_groups = None
            for T in GROUP_CHOICES:
                if T >= C:
                    break
                assign = np.empty(C, np.int32)
                bits = scale * _rans.cluster_channels(hist, T, CLUSTER_ITERS, assign)
                gcost = bits + T * nsym * _TABLE_BITS_PER_SYMBOL + C * 8
                if gcost < single and (best_groups is None or gcost < best_groups[0]):
                    best_groups = (gcost, T, assign)
                else:
                    break
            if best_groups is not None:
                _, T, assign = best_groups
                cm = assign.astype(np.uint8)
                gh = np.zeros((T, nsym), np.int64)
                if step == 1:  # the sample was the whole chunk: its channel counts add up to the groups'
                    _rans.group_hist(hist, assign, T, gh)
                elif nat is not None:
                    if nat.ssmzip_split_hist_groups(_p(words), n, words.itemsize, R, (1 << S) - 1, C, _p(cm),
                                                    _p(remap), nsym, T, _p(gh)) < 0:
                        raise MemoryError("channel group histograms")
                else:
                    _rans.hist_groups(words, R, (1 << S) - 1, remap, C, cm, gh)
                keep = np.flatnonzero(gh.sum(axis=1) > 0)
                newid = np.full(T, -1, np.int64)
                newid[keep] = np.arange(keep.shape[0])
                gh = gh[keep]
                f = np.zeros(gh.shape, np.uint32)
                total = 0.0
                for t in range(gh.shape[0]):
                    b, f[t] = _quantized_bits(gh[t])
                    total += b
                # keep the grouped model only if its exact size wins
                if total + gh.shape[0] * nsym * _TABLE_BITS_PER_SYMBOL + C * 8 < single:
                    freqs = f
                    ctxmap = newid[assign].astype(np.uint8)
    return S, used, freqs, ctxmap


def _write_model(head, used, freqs, C=1, ctxmap=None):
    """Symbol list, optional channel map, frequency tables (FORMAT.md, "model")."""
    head += varint(used.shape[0])
    runs = _runs(used)
    head += varint(len(runs))
    prev = 0
    for start, length in runs:
        head += varint(start - prev)
        head += varint(length)
        prev = start + length
    if freqs.shape[0] > 1:
        head += varint(C)
        head += ctxmap.tobytes()
    tb = np.empty(freqs.size * 2, np.uint8)
    head += tb[:_rans.pack_varints(freqs.reshape(-1), tb)].tobytes()


def _read_model(r, payload, sbits, T):
    """Inverse of _write_model: (used symbols int64[nsym], freqs uint32[T, nsym], C, ctxmap)."""
    nsym = r.varint(MAX_SYMBOLS)
    if nsym < 1:
        raise SSMZipError("corrupt data: model without symbols")
    nruns = r.varint(nsym)
    used = np.empty(nsym, np.int64)
    buf = np.frombuffer(payload, np.uint8)
    pos = _rans.read_runs(buf, r.pos, r.end, nruns, sbits, used)
    if pos < 0:
        raise SSMZipError("corrupt data: bad symbol list")
    r.pos = pos
    C = 1
    ctxmap = _ZERO_MAP
    if T > 1:
        C = r.varint(MAX_CHANNELS)
        if C < 2:
            raise SSMZipError("corrupt data: bad channel count")
        ctxmap = np.frombuffer(r.take(C), np.uint8)
        if int(ctxmap.max()) >= T:
            raise SSMZipError("corrupt data: channel table index out of range")
    freqs = np.empty((T, nsym), np.uint32)
    pos = _rans.unpack_varints(buf, r.pos, r.end, freqs.reshape(-1), _rans.PROB_SCALE)
    if pos < 0:
        raise SSMZipError("corrupt data: bad frequency table")
    r.pos = pos
    if np.any(freqs.sum(axis=1, dtype=np.int64) != _rans.PROB_SCALE):
        raise SSMZipError("corrupt data: frequency table does not sum to 4096")
    return used, freqs, C, ctxmap


_ZERO_MAP = np.zeros(1, np.uint8)
_NO_PARTS = np.zeros((0, 0), np.uint8)
_NO_BYTES = np.zeros(0, np.uint8)
_NO_WORDS = np.zeros(0, np.uint64)


def _code_stream(words, rbits, sbits, used, freqs, C, ctxmap, lanes):
    """rANS-code symbols (w >> rbits) & (2**sbits - 1) with `lanes` states; returns the word stream (uint16)."""
    n = words.shape[0]
    nsym = used.shape[0]
    T = freqs.shape[0]
    out = np.empty(n + 2 * lanes + 1, np.uint16)
    if T == 1:
        C, ctxmap = 1, _ZERO_MAP
    nat = native()
    if nat is not None:
        smask = (1 << sbits) - 1
        freqs = np.ascontiguousarray(freqs, np.uint32)
        used = np.ascontiguousarray(used, np.int64)
        tab = _scratch("enc_tab", T * (smask + 1) + _period(C) // 2 + 1, np.uint64)
        nwords = nat.ssmzip_split_encode(_p(words), n, words.itemsize, rbits, smask, C, _p(ctxmap), _p(freqs),
                                         _p(used), T, nsym, lanes, _p(tab), _p(out), out.shape[0])
        return out[out.shape[0] - nwords:]
    remap = np.zeros(1 << sbits, np.int32)
    remap[used] = np.arange(nsym, dtype=np.int32)
    enc0 = np.empty(T * nsym, np.uint64)
    enc1 = np.empty(T * nsym, np.uint64)
    _rans.build_enc_table(freqs, enc0, enc1)
    nwords = _rans.encode_symbols(words, rbits, (1 << sbits) - 1, C, ctxmap, remap, enc0, enc1, nsym, lanes, out)
    return out[out.shape[0] - nwords:]


def _pad_even(head):
    if len(head) & 1:
        head.append(0)


def _encode_part(vals, nbits, lanes):
    """One raw-bit part (uint8 values < 2**nbits): b"\\x00" + raw, or b"\\x01" + model + rANS stream."""
    n = vals.shape[0]
    raw_bytes = n if nbits == 8 else (n * nbits + 7) // 8
    # a sample first: the raw bits of real floats are nearly always incompressible
    m = min(n, PART_SAMPLE)
    h = _hist(vals[:m], 0, 255)
    if m < n:
        if _sample_says_raw(h, m, nbits):
            return _raw_part(vals, nbits)
        h += _hist(vals[m:], 0, 255)
    used = np.flatnonzero(h)
    est = _rans.entropy_bits(h) + used.shape[0] * _TABLE_BITS_PER_SYMBOL + 64 * 8
    if est < 0.98 * 8 * raw_bytes:
        bits, f = _quantized_bits(h[used])
        if bits + used.shape[0] * _TABLE_BITS_PER_SYMBOL + 64 * 8 < 0.98 * 8 * raw_bytes:
            head = bytearray(b"\x01")
            _write_model(head, used, f.reshape(1, -1))
            stream = _code_stream(vals, 0, 8, used, f.reshape(1, -1), 1, None, lanes)
            head += varint(stream.shape[0])
            return head, stream
    return _raw_part(vals, nbits)


def _sample_says_raw(h, m, nbits):
    """True if m sampled values (histogram h) of nbits bits look incompressible."""
    return _rans.entropy_bits(h) + np.count_nonzero(h) * _TABLE_BITS_PER_SYMBOL > 0.97 * m * nbits


def _raw_top(words, R, nbytes, mbits):
    """The packed top bits of the raw values straight from the words (C only),
    if a sample says they are incompressible (as _encode_part would), else None."""
    nat = native()
    n = words.shape[0]
    m = PART_SAMPLE
    if nat is None or not mbits or n <= m:
        return None
    sample = _scratch("sample", (nbytes + 1) * m, np.uint8).reshape(nbytes + 1, m)
    nat.ssmzip_split_rest(_p(words[:m]), m, words.itemsize, R, nbytes, mbits, 1, _p(sample))
    if not _sample_says_raw(_hist(sample[nbytes], 0, 255), m, mbits):
        return None
    nb = (n * mbits + 7) // 8
    packed = np.empty(nb + 8, np.uint8)
    nat.ssmzip_split_pack_top(_p(words), n, words.itemsize, R, nbytes, mbits, _p(packed))
    return packed[:nb]


def _raw_part(vals, nbits):
    if nbits == 8:
        return bytearray(b"\x00"), vals
    raw_bytes = (vals.shape[0] * nbits + 7) // 8
    packed = np.empty(raw_bytes + 8, np.uint8)
    nat = native()
    if nat is not None:
        nat.ssmzip_split_pack_bits(_p(vals), vals.shape[0], nbits, _p(packed))
    else:
        _rans.pack_bits(vals, nbits, packed)
    return bytearray(b"\x00"), packed[:raw_bytes]


# the tunables above as native/split_encode.c takes them (its Params)
_INT_PARAMS = np.array([KMAX, GROUP_CHOICES[0], SAMPLE_ROWS, CLUSTER_ITERS, MIN_ROWS, PART_SAMPLE, MAX_CHANNELS,
                        MAX_SYMBOLS], np.int64)
_FLOAT_PARAMS = np.array([GROUP_MIN_GAIN, _TABLE_BITS_PER_SYMBOL], np.float64)
assert GROUP_CHOICES == (GROUP_CHOICES[0],), "native/split_encode.c tries one group count"


def encode_split(words, W, E, C=1, lanes=LANES):
    """Code one chunk (1-D contiguous uint8/16/32 words) with rANS streams of
    `lanes` (32, or 8 for archives older than version 3). Returns the payload
    as a list of bytes-like pieces (to be written or joined in order), or None
    if it would not be smaller than the raw words. In one C call when the
    library is built (native/split_encode.c), else _encode_split_py; the same bytes."""
    if native() is None:
        return _encode_split_py(words, W, E, C, lanes)
    (payload, _), = encode_many([(words, C)], W, E, lanes, 1)
    return None if payload is None else [payload]


def encode_many(jobs, W, E, lanes, threads):
    """encode_split for many chunks of one dtype in one C call on `threads` C
    threads (needs native()). jobs: [(words, C)]; returns [(payload as a
    uint8 array, or None when raw is not bigger, XXH64 of the words)]."""
    nat = native()
    k = len(jobs)
    words = [np.ascontiguousarray(w) for w, _ in jobs]
    ns = np.array([w.shape[0] for w in words], np.int64)
    caps = ns * (W // 8)
    # one buffer for all payloads: each fits in its raw size, or is not kept
    out = np.empty(int(caps.sum()) + 1, np.uint8)
    starts = np.zeros(k, np.int64)
    np.cumsum(caps[:-1], out=starts[1:])
    # the arrays whose addresses are passed stay referenced until the call returns
    addrs = np.array([_p(w) for w in words], np.uint64)
    Cs = np.array([c for _, c in jobs], np.int64)
    outs = (starts + _p(out)).astype(np.uint64)
    lens = np.zeros(k, np.int64)
    hashes = np.zeros(k, np.uint64)
    rc = nat.ssmzip_split_encode_many(k, _p(addrs), _p(ns), W, E, _p(Cs), lanes, _p(_INT_PARAMS), _p(_FLOAT_PARAMS),
                                      _p(_rans.NLOGN), _rans.NLOGN.shape[0], _p(outs), _p(caps), _p(lens),
                                      _p(hashes), max(1, int(threads)))
    if rc < 0 or lens.min(initial=0) < 0:
        if rc == -1 or lens.min(initial=0) == -1:
            raise ValueError("bad argument to the chunk encoder")
        raise MemoryError("chunk encoder")
    return [(out[s:s + n] if n else None, int(h)) for s, n, h in zip(starts.tolist(), lens.tolist(), hashes.tolist())]


def _encode_split_py(words, W, E, C=1, lanes=LANES):
    """encode_split's reference path: the steps here, the kernels in numba or C."""
    n = words.shape[0]
    S, used, freqs, ctxmap = choose_model(words, W, E, C)
    R, nbytes, mbits = _layout(W, S)
    T = freqs.shape[0]
    head = bytearray((S | (LANES32_FLAG if lanes == 32 else 0), T))
    _write_model(head, used, freqs, C, ctxmap)
    stream = _code_stream(words, R, S, used, freqs, C, ctxmap, lanes)
    head += varint(stream.shape[0])
    _pad_even(head)
    pieces = [bytes(head), stream]
    size = len(head) + stream.nbytes
    nparts = nbytes + (1 if mbits else 0)
    if nparts:
        top = _raw_top(words, R, nbytes, mbits)
        parts = np.empty((nparts if top is None else nbytes, n), np.uint8)
        nat = native()
        if nat is not None:
            nat.ssmzip_split_rest(_p(words), n, words.itemsize, R, nbytes, mbits, top is None, _p(parts))
        else:
            _rans.split_rest(words, R, nbytes, mbits, parts)
        for j in range(nparts):
            if j == nbytes and top is not None:
                ph, pdata = bytearray(b"\x00"), top
            else:
                ph, pdata = _encode_part(parts[j], 8 if j < nbytes else mbits, lanes)
            if ph[0] == 1:  # a coded stream: keep its words 2-byte aligned
                if (size + len(ph)) & 1:
                    ph.append(0)
            pieces.append(bytes(ph))
            pieces.append(pdata)
            size += len(ph) + pdata.nbytes
            if size >= n * (W // 8):
                return None
    if size >= n * (W // 8):
        return None
    return pieces


def _stream_at(r, payload, nwords):
    if r.pos & 1:
        if r.u8() != 0:
            raise SSMZipError("corrupt data: bad padding")
    r.need(2 * nwords)
    stream = np.frombuffer(payload, np.uint16, count=nwords, offset=r.pos)
    if not stream.flags.aligned:
        stream = stream.copy()
    r.pos += 2 * nwords
    return stream


def _period(C):
    """lcm(C, 32): how many element positions the C kernels' table map covers
    (their scratch holds it as int32 beside the tables)."""
    return C * 32 // math.gcd(C, 32)


def _decode_stream(stream, nwords, used, freqs, C, ctxmap, rbits, parts, nbytes, mbits, packed, packed64, out, lanes):
    """Decode one rANS stream (the reference parser's step; with 32 lanes and the
    C library only reached from the coder microbenchmark, bench/kv_lossless.py)."""
    T, nsym = freqs.shape
    nat = native() if lanes == 32 else None
    if nat is not None:
        symval = (used << rbits).astype(np.uint32)
        scratch = _scratch("dec_tab", (T << _rans.PROB_BITS) + _period(C) // 2 + 1, np.uint64)
        ok = nat.ssmzip_split_decode(_p(stream), nwords, C, _p(ctxmap), _p(freqs), _p(symval), T, nsym, _p(scratch),
                                     _p(parts), parts.shape[0], nbytes, mbits, _p(packed), packed.shape[0], rbits,
                                     _p(out), out.shape[0], out.itemsize)
    else:
        dec = np.empty(T << _rans.PROB_BITS, np.uint64)
        _rans.build_dec_table(freqs, used << rbits, dec)
        if lanes == 8:  # files before archive version 3
            ok = _rans.decode_chunk(stream, nwords, C, ctxmap, dec, parts, nbytes, mbits, packed, packed64, rbits, out)
        else:
            ok = _rans.decode_lanes(stream, nwords, C, ctxmap, dec, parts, nbytes, mbits, packed, rbits, lanes, out)
    if not ok:
        raise SSMZipError("corrupt data: entropy-coded stream does not decode")


# native/split.c's fault codes for a split chunk payload -> the messages of the Python parser
PAYLOAD_ERRORS = {
    0: "entropy-coded stream does not decode",
    -1: "split chunk is truncated",
    -2: "bad varint in split chunk",
    -3: "value out of range in split chunk",
    -4: "symbol width invalid for this dtype",
    -5: "bad number of model tables",
    -6: "model without symbols",
    -7: "bad symbol list",
    -8: "bad channel count",
    -9: "channel table index out of range",
    -10: "bad frequency table",
    -11: "frequency table does not sum to 4096",
    -12: "bad padding",
    -13: "unknown part mode",
    -14: "unexpected trailing bytes in split chunk",
    -15: "split chunk without 32-lane streams (archive version mismatch)",
}


def raise_for(code):
    """The error for a fault code of the C chunk decoder (anything but 1)."""
    if code == -16:
        raise MemoryError("split chunk decoder")
    raise SSMZipError(f"corrupt data: {PAYLOAD_ERRORS.get(code, f'split chunk fault {code}')}")


def decode_split(payload, W, E, out, lanes=LANES):
    """Decode a split chunk into out (1-D contiguous uint8/16/32 of n elements);
    its streams must have `lanes` lanes (archive.stream_lanes of the file's version).
    Returns the XXH64 of out's bytes when the C decoder computed it, else None.

    Raises SSMZipError on any inconsistency.
    """
    n = out.shape[0]
    payload = memoryview(payload)   # slices of it are views, not copies
    nat = native() if lanes == 32 else None
    if nat is not None:  # the whole chunk in one call: the same checks as below, in C
        buf = np.frombuffer(payload, np.uint8)
        h = ctypes.c_uint64()
        code = nat.ssmzip_split_decode_payload(_p(buf), buf.shape[0], W, E, _p(out), n, ctypes.addressof(h))
        if code != 1:
            raise_for(code)
        return h.value
    _decode_split_py(payload, W, E, out, lanes)
    return None


def decode_many(jobs, threads):
    """Decode 32-lane split chunks in one C call on `threads` C threads.
    jobs: [(payload, W, E, out)]; returns [(code, xxh64 of out)] with code 1
    for success (else raise_for(code)). Needs the C library (native())."""
    nat = native()
    k = len(jobs)
    bufs = [np.frombuffer(p, np.uint8) for p, _, _, _ in jobs]
    addr = np.array([_p(b) if b.shape[0] else 0 for b in bufs], np.uint64)
    lens = np.array([b.shape[0] for b in bufs], np.int64)
    Ws = np.array([j[1] for j in jobs], np.int64)
    Es = np.array([j[2] for j in jobs], np.int64)
    outs = np.array([_p(j[3]) for j in jobs], np.uint64)
    ns = np.array([j[3].shape[0] for j in jobs], np.int64)
    hashes = np.zeros(k, np.uint64)
    codes = np.zeros(k, np.int64)
    nat.ssmzip_split_decode_many(k, _p(addr), _p(lens), _p(Ws), _p(Es), _p(outs), _p(ns), _p(hashes), _p(codes),
                                 max(1, int(threads)))
    return list(zip(codes.tolist(), hashes.tolist()))


def _decode_split_py(payload, W, E, out, lanes):
    """decode_split's reference path: the parser here, the numba kernels."""
    n = out.shape[0]
    r = Reader(payload, "split chunk")
    S = r.u8()
    if (32 if S & LANES32_FLAG else 8) != lanes:
        raise SSMZipError(f"corrupt data: split chunk without {lanes}-lane streams (archive version mismatch)")
    S &= ~LANES32_FLAG
    T = r.u8()
    if not E <= S <= W - 1:
        raise SSMZipError(f"corrupt data: symbol width {S} invalid for this dtype")
    if not 1 <= T <= MAX_TABLES:
        raise SSMZipError(f"corrupt data: {T} model tables (max {MAX_TABLES})")
    R, nbytes, mbits = _layout(W, S)
    used, freqs, C, ctxmap = _read_model(r, payload, S, T)
    nwords = r.varint(n + 2 * lanes)
    stream = _stream_at(r, payload, nwords)
    nparts = nbytes + (1 if mbits else 0)
    packed = _NO_BYTES
    packed64 = _NO_WORDS
    coded_top = False
    parts = _scratch("dec_parts", nparts * n, np.uint8).reshape(nparts, n) if nparts else _NO_PARTS
    for j in range(nparts):
        nbits = 8 if j < nbytes else mbits
        mode = r.u8()
        if mode == 0:
            if j < nbytes:
                parts[j] = np.frombuffer(r.take(n), np.uint8)
            else:  # bit-packed: copied, 8-byte aligned with 16 bytes of slack, for the decoder's block reads
                nb = (n * mbits + 7) // 8
                packed64 = _scratch("dec_packed", nb // 8 + 3, np.uint64)
                packed = packed64.view(np.uint8)
                packed[:nb] = np.frombuffer(r.take(nb), np.uint8)
        elif mode == 1:
            pused, pfreqs, _, _ = _read_model(r, payload, nbits, 1)
            pn = r.varint(n + 2 * lanes)
            pstream = _stream_at(r, payload, pn)
            _decode_stream(pstream, pn, pused, pfreqs, 1, _ZERO_MAP, 0, _NO_PARTS, 0, 0, _NO_BYTES, _NO_WORDS, parts[j],
                           lanes)
            if j == nbytes:
                coded_top = True
        else:
            raise SSMZipError(f"corrupt data: unknown part mode {mode}")
    r.done()
    if mbits and not coded_top:
        parts = parts[:nbytes] if nbytes else np.empty((0, n), np.uint8)
    _decode_stream(stream, nwords, used, freqs, C, ctxmap, R, parts, nbytes, mbits, packed, packed64, out, lanes)
