"""Which torch device GPU mode runs on."""
from __future__ import annotations

import torch

from ..engine.native import BackendError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(device=None) -> torch.device:
    """device None: CUDA when there is one, else torch on the CPU (the same code,
    slower). An explicit CUDA device that is not there is an error."""
    if device is None:
        return torch.device("cuda" if cuda_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BackendError(f"unknown torch device {device!r}: {e}") from None
    if d.type == "cuda" and not cuda_available():
        raise BackendError(f"torch device {device!r}: no CUDA device is available")
    return d
