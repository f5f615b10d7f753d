"""fastrnn's numerics policy, in one place: the dtypes it computes in, when fp32 products may
use TF32, and the error bounds every backend is held to (shared/DESIGN.md's table; the
tests, :mod:`fastrnn.testing` and the parity command all read them from here).

==========================================  ========  =========================
compare                                      bound     metric
==========================================  ========  =========================
fp64, any backend vs the reference           1e-9      rel-RMS ``‖a-b‖/‖b‖``
fp32 vs torch.nn fp32 (IEEE products)        2e-5      per output and gradient
fp32 on CUDA with TF32 allowed               2e-3
fp16 / bf16 vs an fp32 reference             1e-2
==========================================  ========  =========================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BOUNDS", "acc_dtype", "bound", "rel_rms", "tf32_allowed", "cudnn_rnn_tf32", "dot_precision"]

BOUNDS = {"float64": 1e-9, "float32": 2e-5, "tf32": 2e-3, "float16": 1e-2, "bfloat16": 1e-2}

HALF = (torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype states, cell math, workspaces and accumulations are kept in: float32 for
    float16/bfloat16 inputs (as cuDNN's RNNs do), else the input dtype itself."""
    return torch.float32 if dtype in HALF else dtype


def cudnn_rnn_tf32() -> bool:
    """Whether torch.nn's recurrent layers on cuDNN run fp32 products in TF32: the one place
    fastrnn reads PyTorch's switch.

    Where the per-operator API exists, ``torch.backends.cudnn.rnn.fp32_precision`` decides;
    "none" there defers to ``torch.backends.cudnn.fp32_precision``, then to
    ``torch.backends.fp32_precision``, and "none" everywhere means IEEE (setting the legacy
    ``cudnn.allow_tf32 = False`` leaves exactly that). Reading the legacy flag instead raises
    once conv and rnn were set apart through the new API, so it is read only on a torch
    without the per-operator API. ``torch.backends.cuda.matmul`` does not apply to recurrent
    layers."""
    levels = (
        getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None),
        getattr(torch.backends.cudnn, "fp32_precision", None),
        getattr(torch.backends, "fp32_precision", None),
    )
    if levels[0] is None:  # a torch without the per-operator API
        return bool(torch.backends.cudnn.allow_tf32)
    for precision in levels:
        if precision not in (None, "none"):
            return precision == "tf32"
    return False


def tf32_allowed(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether fp32 recurrent products may use TF32: on CUDA, exactly when torch.nn's LSTM
    would (``cudnn_rnn_tf32``; TF32 by PyTorch's default)."""
    return device.type == "cuda" and dtype == torch.float32 and cudnn_rnn_tf32()


def dot_precision(t: Tensor) -> str:
    """The Triton ``input_precision`` of fp32 products on ``t``'s device: "tf32" or "ieee"."""
    return "tf32" if tf32_allowed(t.device, t.dtype) else "ieee"


def bound(dtype: torch.dtype, *, tf32: bool = False) -> float:
    """The numerics-table bound for results computed in ``dtype``."""
    if dtype == torch.float32 and tf32:
        return BOUNDS["tf32"]
    return BOUNDS[str(dtype).replace("torch.", "")]


def rel_rms(a: Tensor, b: Tensor) -> float:
    """``‖a - b‖ / ‖b‖`` in float64; the absolute norm where ``b`` is all zeros, inf on NaN."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    num = torch.linalg.vector_norm(a - b).item()
    den = torch.linalg.vector_norm(b).item()
    if math.isnan(num):
        return math.inf
    return num / den if den > 0 else num
