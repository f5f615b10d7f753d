"""Numerical parity between recurrent modules, as a library feature.

``compare(a, b, *inputs)`` runs two recurrent modules with the same weights on the same
inputs, forward and backward with the same upstream gradient, and reports the relative
RMS error ``||a - b|| / ||b||`` of every output, final state and gradient (input, initial
states, every weight), against the bound for the dtype from fastrnn's numerics contract:

=====================================  ========
fp64 against fp64                       1e-9
fp32 (IEEE matmul)                      2e-5
fp32 on CUDA with TF32 allowed          2e-3
fp16 / bf16 against an fp32 reference   1e-2
=====================================  ========

``oracle(module)`` gives the reference to compare against: a copy of the module that runs
autograd straight through :mod:`fastrnn.reference`'s cells, in float64 by default.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends
from .convert import TWINS

__all__ = ["BOUNDS", "bound", "rel_rms", "compare", "oracle", "ParityReport", "ParityRow"]

BOUNDS = {"float64": 1e-9, "float32": 2e-5, "tf32": 2e-3, "float16": 1e-2, "bfloat16": 1e-2}
_PRECISION = [torch.float16, torch.bfloat16, torch.float32, torch.float64]  # low to high


def bound(dtype: torch.dtype, *, tf32: bool = False) -> float:
    """The numerics-table bound for results computed in ``dtype``."""
    if dtype == torch.float32 and tf32:
        return BOUNDS["tf32"]
    return BOUNDS[str(dtype).replace("torch.", "")]


def rel_rms(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` in float64; the absolute norm where ``b`` is all zeros."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    num = torch.linalg.vector_norm(a - b).item()
    den = torch.linalg.vector_norm(b).item()
    if math.isnan(num):
        return math.inf
    return num / den if den > 0 else num


@dataclass
class ParityRow:
    name: str
    rel_rms: float
    bound: float

    @property
    def passed(self) -> bool:
        return self.rel_rms <= self.bound


@dataclass
class ParityReport:
    rows: list[ParityRow] = field(default_factory=list)
    title: str = ""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if not r.passed]

    def __getitem__(self, name: str) -> ParityRow:
        return next(r for r in self.rows if r.name == name)

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.rows] + [6])
        lines = [self.title] if self.title else []
        lines.append(f"{'tensor':<{width}}  {'rel-RMS':>10}  {'bound':>7}  ok")
        for r in self.rows:
            lines.append(f"{r.name:<{width}}  {r.rel_rms:>10.3e}  {r.bound:>7.0e}  {'yes' if r.passed else 'NO'}")
        lines.append(f"{'all':<{width}}  {'':>10}  {'':>7}  {'yes' if self.passed else 'NO'}")
        return "\n".join(lines)


def _dtype(m: nn.Module) -> torch.dtype:
    return next(m.parameters()).dtype


def _device(m: nn.Module) -> torch.device:
    return next(m.parameters()).device


def _tf32(m: nn.Module) -> bool:
    return _device(m).type == "cuda" and _dtype(m) == torch.float32 and torch.backends.cudnn.allow_tf32


def _prepare(x: Any, dtype: torch.dtype, device: torch.device, leaves: list):
    """A fresh copy of an input structure in ``dtype``; floating tensors become grad leaves."""
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return PackedSequence(_prepare(x.data, dtype, device, leaves), x.batch_sizes,
                              x.sorted_indices, x.unsorted_indices)
    if isinstance(x, (tuple, list)):
        return type(x)(_prepare(t, dtype, device, leaves) for t in x)
    if isinstance(x, Tensor) and x.is_floating_point():
        t = x.detach().to(device=device, dtype=dtype).requires_grad_()
        leaves.append(t)
        return t
    return x


def _flatten(out: Any) -> list[Tensor]:
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return [out]


def _input_names(module: nn.Module, inputs: tuple) -> list[str]:
    names = ["input"]
    if len(inputs) > 1 and inputs[1] is not None:
        names += ["h0", "c0"] if isinstance(inputs[1], (tuple, list)) else ["h0"]
    return names


def _output_names(module: nn.Module, n: int) -> list[str]:
    names = ["output", "h_n", "c_n"] if isinstance(module, nn.RNNBase) else ["h", "c"]
    return names[:n]


def _forward(module: nn.Module, inputs: tuple):
    leaves: list[Tensor] = []
    args = _prepare(inputs, _dtype(module), _device(module), leaves)
    return _flatten(module(*args)), leaves


def _backward(module: nn.Module, outs: list[Tensor], leaves: list[Tensor], upstream: list[Tensor]):
    params = [p for _, p in module.named_parameters()]
    loss = sum((o.double() * g.to(o.device)).sum() for o, g in zip(outs, upstream))
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves + params)]
    return grads[: len(leaves)], grads[len(leaves):]


def compare(
    a: nn.Module,
    b: nn.Module,
    *inputs: Any,
    seed: int = 0,
    sync_weights: bool = True,
    tol: Optional[float] = None,
) -> ParityReport:
    """Relative RMS error of ``a`` against ``b`` for every output, final state and gradient.

    Args:
        a, b: recurrent modules of the same configuration (any mix of fastrnn, torch.nn,
            devices and dtypes). With ``sync_weights`` (default), ``b`` first receives a copy
            of ``a``'s weights, cast to ``b``'s dtype.
        *inputs: the forward arguments: input (Tensor or PackedSequence) and optional hx.
            Each module gets its own copy in its own dtype and device.
        seed: seeds the upstream gradient, drawn once and shared by both runs.
        tol: overrides the bound, which is otherwise taken from the numerics table for the
            less precise of the two modules.

    Example::

        >>> lstm = fastrnn.LSTM(8, 16, backend="reference")
        >>> report = fastrnn.testing.compare(lstm, torch.nn.LSTM(8, 16), torch.randn(5, 3, 8))
        >>> report.passed
        True
    """
    if sync_weights:
        with torch.no_grad():
            for pa, pb in zip(a.parameters(), b.parameters()):
                pb.copy_(pa)
    lo = min(_dtype(a), _dtype(b), key=_PRECISION.index)
    limit = tol if tol is not None else bound(lo, tf32=_tf32(a) or _tf32(b))
    outs_a, leaves_a = _forward(a, inputs)
    outs_b, leaves_b = _forward(b, inputs)
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs_a]
    gin_a, gp_a = _backward(a, outs_a, leaves_a, upstream)
    gin_b, gp_b = _backward(b, outs_b, leaves_b, upstream)
    report = ParityReport(title=f"{type(a).__name__} ({_dtype(a)}) vs {type(b).__name__} ({_dtype(b)})")
    for name, x, y in zip(_output_names(a, len(outs_a)), outs_a, outs_b):
        report.rows.append(ParityRow(name, rel_rms(x, y), limit))
    for name, x, y in zip(_input_names(a, inputs), gin_a, gin_b):
        report.rows.append(ParityRow(f"grad_{name}", rel_rms(x, y), limit))
    for (name, _), x, y in zip(a.named_parameters(), gp_a, gp_b):
        report.rows.append(ParityRow(f"grad_{name}", rel_rms(x, y), limit))
    return report


def oracle(module: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``module`` (fastrnn or torch.nn) that runs plain autograd through
    :mod:`fastrnn.reference`'s cells, in ``dtype``: the reference results are measured by."""
    twin = copy.deepcopy(module)
    if type(twin) in TWINS:
        twin.__class__ = TWINS[type(twin)]
    elif not isinstance(twin, tuple(TWINS.values())):
        raise TypeError(f"oracle() takes a recurrent module, got {type(module).__name__}")
    twin.backend = backends.ORACLE
    return twin.to(dtype)
