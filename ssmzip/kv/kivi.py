"""Fixed-rate packed KV cache in the style of KIVI (Liu et al., ICML'24), for in-memory use.

Asymmetric min/max integer quantisation of a KV cache K, V of shape [..., H, T, D]:

- keys per channel: for each channel, every `group` consecutive tokens share one
  scale and one min;
- values per token: every min(group, D) consecutive channels share one scale and min;
- tokens kept exactly (as float16): the first `sinks`, and the most recent ones that
  do not fill a whole key group, plus at least `residual` of them (like KIVI's
  residual_length). The same tokens are kept exactly for K and V.

Scales and mins are float16, with the min rounded down and the scale rounded up so
that every value lies in [min, min + (2^bits-1)*scale]: the error of a quantised
value is at most scale/2. Codes are bit-packed (2-bit: 4 per byte, 4-bit: 2 per byte).
Values must lie within the float16 range.

The size is fixed by the shape: about bits + 32/group bits per element. This is
meant for in-memory use; ssmzip.kv's entropy-coded mode="lossy" is the smaller format.

to_bytes() layout (little-endian, no pickle):
    magic b"SSKIVI\\x00\\x01" | u16 version | u8 bits | u8 dtype | u8 ndim
    | u32 group | u32 residual | u32 sinks | ndim x u64 shape
    | K codes | V codes | K scales | K mins | V scales | V mins (float16)
    | K exact tokens | V exact tokens (float16, [B, T - quantised, D]) | u32 crc32
where B is the product of the leading dims, exact tokens are the sinks then the tail.
"""
import math
import struct
import zlib

import numpy as np

from ssmzip.errors import SSMZipError

__all__ = ["pack", "PackedKV"]

MAGIC = b"SSKIVI\x00\x01"
VERSION = 1
_HEAD = struct.Struct("<8sHBBBIII")
_BITS = (2, 4, 8)
_DTYPES = {"float16": 1, "float32": 2, "bfloat16": 3, "float64": 4}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_NDIM = 32
_U32 = 2**32 - 1


def _as_float32(x):
    """Array or torch tensor -> (float32 numpy array, dtype name)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu()
        name = str(x.dtype).replace("torch.", "")
        x = x.float().numpy()
    else:
        x = np.asarray(x)
        name = x.dtype.name
    if name not in _DTYPES:
        raise ValueError(f"kivi.pack needs float16/bfloat16/float32/float64 input, got {name}")
    return np.asarray(x, np.float32), name


def _split(T, group, residual, sinks):
    """(exact leading tokens, quantised tokens) for a cache of T tokens."""
    ns = min(sinks, T)
    nq = max(T - ns - residual, 0) // group * group
    return ns, nq


def _value_group(group, D):
    vg = max(1, min(group, D))
    if D % vg:
        raise ValueError(f"group {group} must divide head_dim {D} (values are quantised in groups of channels)")
    return vg


def _f16_round(a, up):
    """float64 -> float16, rounded down (up=False) or up (up=True)."""
    h = a.astype(np.float16)
    bad = (h.astype(np.float64) < a) if up else (h.astype(np.float64) > a)
    h[bad] = np.nextafter(h[bad], np.float16(np.inf if up else -np.inf))
    return h


def _quantise(x, axis, bits):
    """Codes (uint8), float16 scale and min of x, reduced over `axis`."""
    mn16 = _f16_round(x.min(axis=axis).astype(np.float64), up=False)
    mx = x.max(axis=axis).astype(np.float64)
    s16 = _f16_round((mx - mn16) / (2**bits - 1), up=True)
    mn = np.expand_dims(mn16.astype(np.float32), axis)
    s = np.expand_dims(s16.astype(np.float32), axis)
    q = np.rint((x - mn) / np.where(s == 0, np.float32(1), s))
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8), s16, mn16


def _pack_bits(q, bits):
    per = 8 // bits
    q = q.reshape(-1)
    if per == 1:
        return q
    q = np.concatenate([q, np.zeros(-q.size % per, np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(q << shifts, axis=1).astype(np.uint8)


def _unpack_bits(b, bits, n):
    per = 8 // bits
    if per == 1:
        return b[:n]
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return ((b[:, None] >> shifts) & np.uint8(2**bits - 1)).reshape(-1)[:n]


class PackedKV:
    """A KIVI-style packed K, V pair; see the module docstring."""

    def __init__(self, shape, dtype, bits, group, residual, sinks, arrays):
        self.shape, self.dtype = tuple(int(d) for d in shape), dtype
        self.bits, self.group, self.residual, self.sinks = bits, group, residual, sinks
        # k_codes, v_codes, k_scale, k_min, v_scale, v_min, k_exact, v_exact
        self.arrays = arrays

    def _dims(self):
        B = math.prod(self.shape[:-2])
        T, D = self.shape[-2:]
        ns, nq = _split(T, self.group, self.residual, self.sinks)
        vg = _value_group(self.group, D)
        return B, T, D, ns, nq, vg

    def _sizes(self):
        """Element counts of the eight arrays, in order."""
        B, T, D, ns, nq, vg = self._dims()
        per = 8 // self.bits
        nc = -(-B * nq * D // per)
        nk = B * (nq // self.group) * D
        nv = B * nq * (D // vg)
        ne = B * (T - nq) * D
        return [nc, nc, nk, nk, nv, nv, ne, ne]

    @property
    def nbytes(self):
        """Payload bytes: codes, float16 scales and mins, float16 exact tokens."""
        return sum(a.nbytes for a in self.arrays)

    @property
    def bits_per_element(self):
        n = 2 * math.prod(self.shape)
        return 8 * self.nbytes / n if n else 0.0

    def dequantize(self):
        """-> (K_hat, V_hat), float32 arrays of the original shape."""
        B, T, D, ns, nq, vg = self._dims()
        kc, vc, ks, km, vs, vm, ke, ve = self.arrays
        n = B * nq * D
        out = []
        for codes, s, m, ex, is_key in ((kc, ks, km, ke, True), (vc, vs, vm, ve, False)):
            x = np.empty((B, T, D), np.float32)
            ex = ex.reshape(B, T - nq, D)
            x[:, :ns] = ex[:, :ns]
            x[:, ns + nq:] = ex[:, ns:]
            q = _unpack_bits(codes, self.bits, n).astype(np.float32)
            s, m = s.astype(np.float32), m.astype(np.float32)
            if is_key:
                G = nq // self.group
                q = q.reshape(B, G, self.group, D)
                s, m = s.reshape(B, G, 1, D), m.reshape(B, G, 1, D)
            else:
                q = q.reshape(B, nq, D // vg, vg)
                s, m = s.reshape(B, nq, D // vg, 1), m.reshape(B, nq, D // vg, 1)
            x[:, ns:ns + nq] = (q * s + m).reshape(B, nq, D)
            out.append(x.reshape(self.shape))
        return tuple(out)

    def to_bytes(self):
        """Serialise (no pickle); see the module docstring for the layout."""
        head = _HEAD.pack(MAGIC, VERSION, self.bits, _DTYPES[self.dtype], len(self.shape),
                          self.group, self.residual, self.sinks)
        parts = [head, struct.pack(f"<{len(self.shape)}Q", *self.shape)]
        parts += [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in self.arrays]
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, b):
        """Parse to_bytes() output; bad data raises SSMZipError."""
        b = memoryview(b).cast("B")
        if len(b) < _HEAD.size + 4:
            raise SSMZipError("kivi: data too short")
        magic, version, bits, dcode, ndim, group, residual, sinks = _HEAD.unpack_from(b)
        if magic != MAGIC:
            raise SSMZipError("kivi: bad magic (not a packed KV cache)")
        if version != VERSION:
            raise SSMZipError(f"kivi: unsupported version {version}")
        if bits not in _BITS or dcode not in _DTYPE_NAMES or group < 1 or not 2 <= ndim <= _MAX_NDIM:
            raise SSMZipError("kivi: invalid header")
        pos = _HEAD.size + 8 * ndim
        if len(b) < pos + 4:
            raise SSMZipError("kivi: data too short")
        shape = struct.unpack_from(f"<{ndim}Q", b, _HEAD.size)
        total = 1
        for d in shape:
            total *= max(d, 1)
        if total >= 2**58:
            raise SSMZipError("kivi: shape too large")
        p = cls(shape, _DTYPE_NAMES[dcode], bits, group, residual, sinks, None)
        try:
            sizes = p._sizes()
        except ValueError:
            raise SSMZipError("kivi: group does not divide head_dim") from None
        isz = [1, 1] + [2] * 6
        if pos + sum(n * i for n, i in zip(sizes, isz)) + 4 != len(b):
            raise SSMZipError("kivi: data length does not match the header (truncated or corrupted)")
        if zlib.crc32(b[:-4]) != struct.unpack_from("<I", b, len(b) - 4)[0]:
            raise SSMZipError("kivi: checksum mismatch (corrupted data)")
        arrays = []
        for n, i in zip(sizes, isz):
            arrays.append(np.frombuffer(b, np.uint8 if i == 1 else "<f2", n, pos).copy())
            pos += n * i
        p.arrays = arrays
        return p

    def __repr__(self):
        return (f"PackedKV(shape={self.shape}, bits={self.bits}, group={self.group}, "
                f"residual={self.residual}, sinks={self.sinks}, bpe={self.bits_per_element:.3f})")


def pack(K, V, bits=4, group=128, residual=0, sinks=0):
    """Quantise K, V ([..., H, T, D]) to a PackedKV (KIVI-style, fixed rate)."""
    K, kname = _as_float32(K)
    V, _ = _as_float32(V)
    if K.shape != V.shape or K.ndim < 2:
        raise ValueError(f"K and V must have the same shape [..., H, T, D], got {K.shape} and {V.shape}")
    if K.ndim > _MAX_NDIM:
        raise ValueError(f"at most {_MAX_NDIM} dims")
    if bits not in _BITS:
        raise ValueError(f"bits must be one of {_BITS}, got {bits}")
    for name, v, lo in (("group", group, 1), ("residual", residual, 0), ("sinks", sinks, 0)):
        if not isinstance(v, (int, np.integer)) or not lo <= v <= _U32:
            raise ValueError(f"{name} must be an integer in [{lo}, 2^32), got {v!r}")
    group, residual, sinks = int(group), int(residual), int(sinks)
    shape = K.shape
    T, D = shape[-2:]
    vg = _value_group(group, D)
    B = math.prod(shape[:-2])
    K, V = K.reshape(B, T, D), V.reshape(B, T, D)
    ns, nq = _split(T, group, residual, sinks)
    sl = slice(ns, ns + nq)
    kq, ks, km = _quantise(K[:, sl].reshape(B, nq // group, group, D), 2, bits)
    vq, vs, vm = _quantise(V[:, sl].reshape(B, nq, D // vg, vg), 3, bits)
    exact = [np.concatenate([x[:, :ns], x[:, ns + nq:]], axis=1).astype(np.float16).reshape(-1)
             for x in (K, V)]
    arrays = [_pack_bits(kq, bits), _pack_bits(vq, bits),
              ks.reshape(-1), km.reshape(-1), vs.reshape(-1), vm.reshape(-1)] + exact
    return PackedKV(shape, kname, bits, group, residual, sinks, arrays)
