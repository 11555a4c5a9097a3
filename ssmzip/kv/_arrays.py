"""Dtype table and conversions between user tensors (numpy, torch) and words.

Internally every tensor is a 1-D contiguous numpy array of unsigned words
(uint8/16/32 for the float codecs) or of bytes (any other dtype), plus a
dtype name and a shape. bfloat16 and the float8 types have no numpy dtype:
numpy callers pass them as ml_dtypes arrays (recognised by dtype name, no
import needed) or as uint16/uint8 arrays with ``dtype="bfloat16"``; decoding
to numpy gives uint16 (bf16) / uint8 (fp8) arrays, decoding to torch gives
the real torch dtype. torch is imported only when a torch tensor is given or
``out="torch"`` is asked.
"""
import numpy as np

from ssmzip.errors import SSMZipError

# code -> (name, itemsize, numpy storage dtype, safetensors name, torch name)
DTYPES = {
    0: ("bytes", 1, np.uint8, None, "uint8"),
    1: ("float32", 4, np.float32, "F32", "float32"),
    2: ("float16", 2, np.float16, "F16", "float16"),
    3: ("bfloat16", 2, np.uint16, "BF16", "bfloat16"),
    4: ("float8_e4m3fn", 1, np.uint8, "F8_E4M3", "float8_e4m3fn"),
    5: ("float8_e5m2", 1, np.uint8, "F8_E5M2", "float8_e5m2"),
    16: ("bool", 1, np.bool_, "BOOL", "bool"),
    17: ("int8", 1, np.int8, "I8", "int8"),
    18: ("uint8", 1, np.uint8, "U8", "uint8"),
    19: ("int16", 2, np.int16, "I16", "int16"),
    20: ("uint16", 2, np.uint16, "U16", "uint16"),
    21: ("int32", 4, np.int32, "I32", "int32"),
    22: ("uint32", 4, np.uint32, "U32", "uint32"),
    23: ("int64", 8, np.int64, "I64", "int64"),
    24: ("uint64", 8, np.uint64, "U64", "uint64"),
    25: ("float64", 8, np.float64, "F64", "float64"),
    26: ("complex64", 8, np.complex64, "C64", "complex64"),
    27: ("complex128", 16, np.complex128, None, "complex128"),
}
CODE_OF = {v[0]: k for k, v in DTYPES.items()}
FLOAT_CODES = (1, 2, 3, 4, 5)
ST_TO_NAME = {v[3]: v[0] for v in DTYPES.values() if v[3]}

_WORD = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def dtype_code(name):
    try:
        return CODE_OF[name]
    except KeyError:
        raise SSMZipError(f"unsupported dtype {name!r}") from None


def itemsize(code):
    return DTYPES[code][1]


def is_float(code):
    return code in FLOAT_CODES


def word_dtype(code):
    """The numpy dtype the codec works on for this tensor dtype."""
    if is_float(code):
        return _WORD[DTYPES[code][1]]
    return np.uint8


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _torch_to_numpy(t):
    import torch  # only here: a torch tensor was given

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    name = str(t.dtype).replace("torch.", "")
    if name not in CODE_OF or name == "bytes":
        raise SSMZipError(f"unsupported torch dtype {t.dtype}")
    code = CODE_OF[name]
    size = DTYPES[code][1]
    if code in (3, 4, 5) or name in ("uint16", "uint32", "uint64"):
        # numpy has no bf16/fp8 and older torch has no uint16 -> numpy: go through a same-size int view
        view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
        arr = t.view(view).numpy().view(DTYPES[code][2] if code not in (3, 4, 5) else _WORD[size])
    else:
        arr = t.numpy()
    return name, tuple(t.shape), arr


def to_words(x, dtype=None):
    """(dtype code, shape, 1-D contiguous word array) for a tensor. Never modifies x.

    dtype: optional name overriding the storage dtype ("bfloat16" for a
    uint16 array that holds bf16 bits, "float8_e4m3fn"/"float8_e5m2" for uint8).
    """
    if _is_torch(x):
        name, shape, arr = _torch_to_numpy(x)
    else:
        if isinstance(x, (bytes, bytearray, memoryview)):
            raise SSMZipError("expected a numpy array or torch tensor, got bytes")
        arr = np.asarray(x)
        shape = arr.shape
        name = arr.dtype.name
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
    if dtype is not None:
        code = dtype_code(dtype)
        if DTYPES[code][1] != arr.dtype.itemsize:
            raise SSMZipError(f"dtype {dtype!r} needs {DTYPES[code][1]}-byte elements, got {arr.dtype}")
        name = dtype
    if name not in CODE_OF or name == "bytes":
        raise SSMZipError(f"unsupported dtype {name!r}")
    code = CODE_OF[name]
    flat = np.ascontiguousarray(arr).reshape(-1)
    if is_float(code):
        words = flat.view(word_dtype(code))
    else:
        words = flat.view(np.uint8)
    return code, tuple(int(d) for d in shape), words


def from_words(code, shape, words, out="numpy"):
    """The user-facing tensor for decoded words (which it may take over)."""
    if out not in ("numpy", "torch"):
        raise ValueError(f"out must be 'numpy' or 'torch', not {out!r}")
    name, size, npdt, _, tname = DTYPES[code]
    arr = words.view(npdt).reshape(shape)
    if out == "numpy":
        return arr
    import torch  # only here: out="torch" was asked

    tdt = getattr(torch, tname, None)
    if tdt is None:
        raise SSMZipError(f"this torch has no dtype {tname}")
    if code in (3, 4, 5) or name in ("uint16", "uint32", "uint64"):
        view = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[size]
        t = torch.from_numpy(np.ascontiguousarray(words.view(view)).reshape(shape))
        return t.view(tdt)
    return torch.from_numpy(np.ascontiguousarray(arr))
