"""Sparse rows (Mustafar-like): per-vector magnitude pruning, a bitmap plus the kept values.

prune() keeps, in every vector of the last axis (one head of one token), the
D - round(sparsity * D) entries of largest magnitude. A chunk stores which
elements were kept and their values, exactly or quantised:

    u8      values: 0 exact, 1 quantised (ECSQ, one channel)
    varint  number of kept elements
    bitmap  ceil(n / 8) bytes, element i at bit i % 8 of byte i // 8
    values  exact: the kept words coded as a lossless float chunk (the split
            codec); quantised: an ecsq payload of (kept, 1) values
Pruned elements decode as +0.0.
"""
import numpy as np

from ssmzip.errors import SSMZipError
from ssmzip.kv import ecsq
from ssmzip.kv._arrays import DTYPES
from ssmzip.kv._io import Reader, varint
from ssmzip.kv.floatsplit import FLOAT_SPECS, decode_split, encode_split

VALUES_EXACT = 0
VALUES_ECSQ = 1


def prune_mask(x, sparsity):
    """Boolean mask (same shape as x, float32 [..., D]) of the entries kept."""
    D = x.shape[-1]
    drop = int(round(sparsity * D))
    if drop <= 0:
        return np.ones(x.shape, bool)
    if drop >= D:
        return np.zeros(x.shape, bool)
    order = np.argpartition(np.abs(x), drop - 1, axis=-1)[..., :drop]
    mask = np.ones(x.shape, bool)
    np.put_along_axis(mask, order, False, axis=-1)
    return mask


def encode(words, code, mask, step=None, lanes=32):
    """(payload pieces, reconstructed words) for the words of one chunk (1-D)
    with mask (bool, same length); values quantised when step is given.
    lanes: of the exact values' rANS streams (archive.stream_lanes)."""
    kept = words[mask]
    bitmap = np.packbits(mask, bitorder="little").tobytes()
    head = bytearray()
    rec = np.zeros_like(words)
    if step is None:
        W, E, _ = FLOAT_SPECS[DTYPES[code][0]]
        p = encode_split(np.ascontiguousarray(kept), W, E, 1, lanes) if kept.shape[0] else None
        body = [kept.tobytes()] if p is None else p
        head += bytes((VALUES_EXACT,)) + varint(kept.shape[0]) + bitmap + bytes((0 if p is None else 1,))
        rec[mask] = kept
    else:
        head += bytes((VALUES_ECSQ,)) + varint(kept.shape[0]) + bitmap
        body = []
        if kept.shape[0]:
            body, r = ecsq.encode(ecsq.from_words(kept, code).reshape(-1, 1), step)
            rec[mask] = ecsq.to_words(r.reshape(-1), code)
    return [bytes(head)] + list(body), rec


def decode(payload, code, out, where, lanes=32):
    """Decode a sparse chunk into out (the chunk's words)."""
    n = out.shape[0]
    r = Reader(payload, where)
    vmode = r.u8()
    nk = r.varint(n)
    mask = np.unpackbits(np.frombuffer(bytes(r.take((n + 7) // 8)), np.uint8), count=n, bitorder="little").astype(bool)
    if int(mask.sum()) != nk:
        raise SSMZipError(f"corrupt data: bitmap and count disagree in {where}")
    out[:] = 0
    if vmode == VALUES_EXACT:
        how = r.u8()
        rest = bytes(r.take(r.remaining()))
        kept = np.empty(nk, out.dtype)
        if how == 0:
            if len(rest) != kept.nbytes:
                raise SSMZipError(f"corrupt data: size of the kept values in {where}")
            kept.view(np.uint8)[:] = np.frombuffer(rest, np.uint8)
        elif how == 1 and nk:
            W, E, _ = FLOAT_SPECS[DTYPES[code][0]]
            decode_split(rest, W, E, kept, lanes)
        else:
            raise SSMZipError(f"corrupt data: bad value coding in {where}")
    elif vmode == VALUES_ECSQ:
        rest = bytes(r.take(r.remaining()))
        if nk:
            kept = ecsq.to_words(ecsq.decode(rest, nk, 1, where).reshape(-1), code)
        elif rest:
            raise SSMZipError(f"corrupt data: trailing bytes in {where}")
        else:
            kept = np.empty(0, out.dtype)
    else:
        raise SSMZipError(f"corrupt data: unknown value mode {vmode} in {where}")
    out[mask] = kept

