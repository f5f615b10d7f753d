"""``python -m fastrnn.parity``: parity of a fastrnn layer against torch.nn and the reference.

Example::

    python -m fastrnn.parity --cell lstm --hidden 512 --batch 8 --seq 100 --backend cpp

prints, for every output, final state and gradient, the relative RMS error of fastrnn
against torch.nn (same dtype) and against the float64 reference oracle, with the bound
from the numerics table. Exit status 1 if any row exceeds its bound.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

import fastrnn
from fastrnn import testing

CELLS = {"lstm": (fastrnn.LSTM, nn.LSTM), "gru": (fastrnn.GRU, nn.GRU), "rnn": (fastrnn.RNN, nn.RNN)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastrnn.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    p.add_argument("--input", type=int, default=None, help="input size (default: hidden)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=50)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--proj", type=int, default=0, help="proj_size (LSTM only)")
    p.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="RNN only")
    p.add_argument("--backend", default="auto", choices=list(fastrnn.backends.BACKENDS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    ours_cls, nn_cls = CELLS[a.cell]
    kw = dict(num_layers=a.layers, bidirectional=a.bidirectional)
    if a.cell == "lstm" and a.proj:
        kw["proj_size"] = a.proj
    if a.cell == "rnn":
        kw["nonlinearity"] = a.nonlinearity
    in_size = a.input or a.hidden
    ours = ours_cls(in_size, a.hidden, backend=a.backend, **kw).to(a.device, dtype)
    x = torch.randn(a.seq, a.batch, in_size, device=a.device)
    ok = True
    print(f"fastrnn {fastrnn.__version__}, torch {torch.__version__}, device {a.device}, "
          f"backend {fastrnn.backends.resolve(a.backend, torch.device(a.device))}")
    print(f"{a.cell.upper()} T={a.seq} B={a.batch} input={in_size} hidden={a.hidden} {kw}\n")
    if dtype in (torch.float16, torch.bfloat16):
        print("torch.nn: skipped (its fp16/bf16 results are not a reference; see the oracle below)\n")
    else:
        theirs = nn_cls(in_size, a.hidden, **kw).to(a.device, dtype)
        r = testing.compare(ours, theirs, x)
        r.title = f"fastrnn ({a.dtype}) vs torch.nn ({a.dtype})"
        print(r, end="\n\n")
        ok &= r.passed
    ref = testing.oracle(ours)
    r = testing.compare(ours, ref, x, sync_weights=False)
    r.title = f"fastrnn ({a.dtype}) vs reference (float64)"
    print(r)
    ok &= r.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
