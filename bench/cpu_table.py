"""``python -m bench.cpu_table``: the C++ backend's speed goals, measured against torch.nn.

Each row times torch.nn and fastrnn (cpp) in the same run on the same inputs with
torch.utils.benchmark.Timer (warm-up, then the best of three blocked_autorange medians) and prints
t(torch.nn) / t(fastrnn). Forward is under no_grad; forward+backward backpropagates a
random upstream gradient through the output. ``--json PATH`` keeps the raw numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys

import torch
import torch.utils.benchmark as tb
from torch.nn.utils.rnn import pack_padded_sequence

from .providers import FAST, NN

# (name, cell, (T, B, input, hidden), mode, goal, packed)
ROWS = [
    ("LSTM small fwd", "lstm", (100, 1, 32, 64), "fwd", 3.0, False),
    ("LSTM small fwd+bwd", "lstm", (100, 1, 32, 64), "fwdbwd", 3.0, False),
    ("LSTM (100,8,64,128) fwd+bwd", "lstm", (100, 8, 64, 128), "fwdbwd", 2.0, False),
    ("LSTM (100,32,256,256) fwd+bwd", "lstm", (100, 32, 256, 256), "fwdbwd", 1.2, False),
    ("LSTM (100,64,512,512) fwd", "lstm", (100, 64, 512, 512), "fwd", 1.0, False),
    ("LSTM (100,64,512,512) fwd+bwd", "lstm", (100, 64, 512, 512), "fwdbwd", 1.0, False),
    ("GRU (100,1,32,64) fwd+bwd", "gru", (100, 1, 32, 64), "fwdbwd", 10.0, False),
    ("GRU (100,32,256,256) fwd+bwd", "gru", (100, 32, 256, 256), "fwdbwd", 1.5, False),
    ("RNN (100,8,64,128) fwd+bwd", "rnn", (100, 8, 64, 128), "fwdbwd", 2.0, False),
    ("LSTM packed (100,8,64,128) fwd", "lstm", (100, 8, 64, 128), "fwd", 2.0, True),
]


def _median(fn, min_run_time, repeats=3):
    """Median of a blocked_autorange, best of ``repeats``: this shared 2-core machine shows
    bursts of interference that a single median does not absorb."""
    fn()
    fn()
    timer = tb.Timer("fn()", globals={"fn": fn})
    return min(timer.blocked_autorange(min_run_time=min_run_time).median for _ in range(repeats))


def measure(row, backend, min_run_time):
    name, cell, (T, B, I, H), mode, goal, packed = row
    torch.manual_seed(0)
    ours_cls, nn_cls = FAST[cell], NN[cell]
    ours = ours_cls(I, H, backend=backend)
    theirs = nn_cls(I, H)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    g = torch.randn(T, B, H)
    if packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        g = torch.randn(int(lengths.sum()), H)

    def run(m):
        if mode == "fwd":
            def f():
                with torch.no_grad():
                    m(x)
        else:
            def f():
                out = m(x)[0]
                (out.data if packed else out).backward(g)
        return f

    t_nn = _median(run(theirs), min_run_time)
    t_ours = _median(run(ours), min_run_time)
    return {"name": name, "cell": cell, "T": T, "B": B, "input": I, "hidden": H, "mode": mode,
            "packed": packed, "goal": goal, "torch_nn_s": t_nn, "fastrnn_s": t_ours, "speedup": t_nn / t_ours}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.cpu_table")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    header = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "backend": a.backend, "commit": commit,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"torch {header['torch']}, {header['threads']} threads, fastrnn backend {a.backend}")
    print(f"{'case':<34} {'torch.nn ms':>12} {'fastrnn ms':>11} {'speedup':>8} {'goal':>6}")
    rows = []
    for row in ROWS:
        r = measure(row, a.backend, a.min_run_time)
        rows.append(r)
        ok = "ok" if r["speedup"] >= r["goal"] else "MISS"
        print(f"{r['name']:<34} {r['torch_nn_s']*1e3:>12.3f} {r['fastrnn_s']*1e3:>11.3f} "
              f"{r['speedup']:>7.2f}x {r['goal']:>5.1f}x {ok}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
