"""Numerical parity between recurrent modules, as a library feature and a command.

``compare(a, b, *inputs)`` runs two recurrent modules with the same weights on the same
inputs, forward and backward with the same upstream gradient, and reports the relative
RMS error ``||a - b|| / ||b||`` of every output, final state and gradient (input, initial
states, every weight), against the bound for the dtype from fastrnn's numerics contract
(:mod:`fastrnn.numerics`: 1e-9 fp64, 2e-5 fp32, 2e-3 fp32 with TF32, 1e-2 fp16/bf16).

``oracle(module)`` gives the reference to compare against: a copy of the module that runs
autograd straight through the reference steps of :mod:`fastrnn.cells`, in float64 by default.

The command::

    python -m fastrnn.testing --cell lstm --hidden 512 --batch 8 --seq 100 --backend cpp

prints, for every output, final state and gradient, the relative RMS error of fastrnn
against torch.nn (same dtype) and against the float64 oracle, with the bound from the
numerics table. Exit status 1 if any row exceeds its bound.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends, cells
from .convert import TWINS
from .modules import LAYERS
from .numerics import BOUNDS, bound, rel_rms, tf32_allowed
from .variants import LAYERS as VARIANT_LAYERS
from .variants import _VariantCell, _VariantLayer

__all__ = ["BOUNDS", "bound", "rel_rms", "compare", "oracle", "ParityReport", "ParityRow", "main"]

_PRECISION = [torch.float16, torch.bfloat16, torch.float32, torch.float64]  # low to high


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
        lines.extend(
            f"{r.name:<{width}}  {r.rel_rms:>10.3e}  {r.bound:>7.0e}  {'yes' if r.passed else 'NO'}" for r in self.rows
        )
        lines.append(f"{'all':<{width}}  {'':>10}  {'':>7}  {'yes' if self.passed else 'NO'}")
        return "\n".join(lines)


def _dtype(m: nn.Module) -> torch.dtype:
    return next(m.parameters()).dtype


def _device(m: nn.Module) -> torch.device:
    return next(m.parameters()).device


def _tf32(m: nn.Module) -> bool:
    return tf32_allowed(_device(m), _dtype(m))


def _prepare(x: Any, dtype: torch.dtype, device: torch.device, leaves: list):
    """A fresh copy of an input structure in ``dtype``; floating tensors become grad leaves."""
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return PackedSequence(
            _prepare(x.data, dtype, device, leaves), x.batch_sizes, x.sorted_indices, x.unsorted_indices
        )
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
    # a torch.compile'd module wraps the layer: name the outputs after the layer inside
    layer = getattr(module, "_orig_mod", module)
    names = ["output", "h_n", "c_n"] if isinstance(layer, (nn.RNNBase, _VariantLayer)) else ["h", "c"]
    return names[:n]


def _forward(module: nn.Module, inputs: tuple):
    leaves: list[Tensor] = []
    args = _prepare(inputs, _dtype(module), _device(module), leaves)
    return _flatten(module(*args)), leaves


def _backward(module: nn.Module, outs: list[Tensor], leaves: list[Tensor], upstream: list[Tensor]):
    params = [p for _, p in module.named_parameters()]
    loss = sum((o.double() * g.to(o.device)).sum() for o, g in zip(outs, upstream, strict=True))
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves + params, strict=True)]
    return grads[: len(leaves)], grads[len(leaves) :]


def compare(
    a: nn.Module,
    b: nn.Module,
    *inputs: Any,
    seed: int = 0,
    sync_weights: bool = True,
    tol: float | None = None,
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
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
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
    for name, x, y in zip(_output_names(a, len(outs_a)), outs_a, outs_b, strict=True):
        report.rows.append(ParityRow(name, rel_rms(x, y), limit))
    for name, x, y in zip(_input_names(a, inputs), gin_a, gin_b, strict=False):
        report.rows.append(ParityRow(f"grad_{name}", rel_rms(x, y), limit))
    for (name, _), x, y in zip(a.named_parameters(), gp_a, gp_b, strict=True):
        report.rows.append(ParityRow(f"grad_{name}", rel_rms(x, y), limit))
    return report


def oracle(module: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``module`` (fastrnn or torch.nn) that runs plain autograd through
    the reference steps of :mod:`fastrnn.cells`, in ``dtype``: what results are measured by."""
    twin = copy.deepcopy(module)
    if type(twin) in TWINS:
        twin.__class__ = TWINS[type(twin)]
    elif not isinstance(twin, (*TWINS.values(), _VariantLayer, _VariantCell)):
        raise TypeError(f"oracle() takes a recurrent module, got {type(module).__name__}")
    twin.backend = backends.ORACLE
    return twin.to(dtype)


# ----------------------------------------------------------------------------------------
# python -m fastrnn.testing
# ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.testing",
        description="Parity of a fastrnn layer against torch.nn and the float64 reference.",
    )
    p.add_argument("--cell", choices=sorted(cells.CELLS), default="lstm")
    p.add_argument("--input", type=int, default=None, help="input size (default: hidden)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=50)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--proj", type=int, default=0, help="proj_size (LSTM and PeepholeLSTM only)")
    p.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="RNN only")
    p.add_argument("--backend", default="auto", choices=list(backends.BACKENDS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    ours_cls = {**LAYERS, **VARIANT_LAYERS}[a.cell]
    nn_cls = next((c for c, twin in TWINS.items() if twin is ours_cls), None)
    kw = dict(num_layers=a.layers, bidirectional=a.bidirectional)
    if a.cell in ("lstm", "peephole_lstm") and a.proj:
        kw["proj_size"] = a.proj
    if a.cell == "rnn":
        kw["nonlinearity"] = a.nonlinearity
    in_size = a.input or a.hidden
    ours = ours_cls(in_size, a.hidden, backend=a.backend, **kw).to(a.device, dtype)
    x = torch.randn(a.seq, a.batch, in_size, device=a.device)
    ok = True
    import fastrnn

    print(
        f"fastrnn {fastrnn.__version__}, torch {torch.__version__}, device {a.device}, "
        f"backend {backends.resolve(a.backend, torch.device(a.device))}"
    )
    print(f"{a.cell.upper()} T={a.seq} B={a.batch} input={in_size} hidden={a.hidden} {kw}\n")
    if nn_cls is None:
        print(f"torch.nn: has no {ours_cls.__name__}; the float64 oracle below is the reference\n")
    elif dtype in (torch.float16, torch.bfloat16):
        print("torch.nn: skipped (its fp16/bf16 results are not a reference; see the oracle below)\n")
    else:
        theirs = nn_cls(in_size, a.hidden, **kw).to(a.device, dtype)
        r = compare(ours, theirs, x)
        r.title = f"fastrnn ({a.dtype}) vs torch.nn ({a.dtype})"
        print(r, end="\n\n")
        ok &= r.passed
    ref = oracle(ours)
    r = compare(ours, ref, x, sync_weights=False)
    r.title = f"fastrnn ({a.dtype}) vs reference (float64)"
    print(r)
    ok &= r.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
