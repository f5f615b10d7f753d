"""``python -m bench``: fastrnn against torch.nn on one default configuration.

Prints the largest relative RMS error over outputs and gradients and the median time of
forward (no_grad) and forward+backward for each available fastrnn backend and torch.nn.
Timing uses torch.utils.benchmark.Timer (CPU) with warm-up, on fresh random inputs.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.utils.benchmark as tb
from torch import nn

import fastrnn
from fastrnn import testing

CELLS = {"lstm": (fastrnn.LSTM, nn.LSTM), "gru": (fastrnn.GRU, nn.GRU), "rnn": (fastrnn.RNN, nn.RNN)}


def _time(fn, min_run_time: float) -> float:
    fn()  # warm-up
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="lstm,gru,rnn")
    p.add_argument("--seq", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--min-run-time", type=float, default=0.5)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n, s in fastrnn.available_backends().items() if s == "available" and
             fastrnn.backends._REGISTRY[n].runs_on(device)]
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"T={a.seq} B={a.batch} input={a.input} hidden={a.hidden}")
    print(f"{'cell':<5} {'provider':<18} {'max rel-RMS':>12} {'fwd ms':>9} {'fwd+bwd ms':>11} {'speedup fwd/fwdbwd':>20}")
    for cell in a.cells.split(","):
        ours_cls, nn_cls = CELLS[cell]
        ref = nn_cls(a.input, a.hidden).to(device)
        x = torch.randn(a.seq, a.batch, a.input, device=device)
        g = torch.randn(a.seq, a.batch, a.hidden, device=device)

        def fwd(m):
            with torch.no_grad():
                m(x)

        def fwdbwd(m):
            m(x)[0].backward(g)

        t_ref = (_time(lambda: fwd(ref), a.min_run_time), _time(lambda: fwdbwd(ref), a.min_run_time))
        print(f"{cell:<5} {'torch.nn':<18} {'':>12} {t_ref[0]*1e3:>9.3f} {t_ref[1]*1e3:>11.3f} {'1.00x / 1.00x':>20}")
        for be in names:
            m = ours_cls(a.input, a.hidden, backend=be).to(device)
            err = max(r.rel_rms for r in testing.compare(m, ref, x).rows)
            t = (_time(lambda: fwd(m), a.min_run_time), _time(lambda: fwdbwd(m), a.min_run_time))
            sp = f"{t_ref[0]/t[0]:.2f}x / {t_ref[1]/t[1]:.2f}x"
            print(f"{cell:<5} {'fastrnn[' + be + ']':<18} {err:>12.2e} {t[0]*1e3:>9.3f} {t[1]*1e3:>11.3f} {sp:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
