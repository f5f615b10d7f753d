"""``python -m bench.cpu_table``: the C++ backend's speed goals, measured against torch.nn.

Each row times torch.nn and fastrnn (cpp) in the same run on the same inputs with
torch.utils.benchmark.Timer: after warm-up, the two alternate for ``--rounds`` rounds of one
blocked_autorange median each, and the row gives the median of the per-round ratios
t(torch.nn) / t(fastrnn) with their range. Forward is under no_grad; forward+backward backpropagates a
random upstream gradient through the output. ``--json PATH`` keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys

import torch
import torch.utils.benchmark as tb
from torch.nn.utils.rnn import pack_padded_sequence

from .providers import FAST, NN
from .runner import device_name

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


def _median(fn, min_run_time):
    return tb.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def measure(row, backend, min_run_time, rounds):
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

    f_nn, f_ours = run(theirs), run(ours)
    for f in (f_nn, f_ours, f_nn, f_ours):  # warm-up
        f()
    # torch.nn and fastrnn alternate, round after round: this shared 2-core machine drifts
    # by tens of percent within minutes, and a ratio of two neighbouring medians cancels
    # most of that; the table gives the median ratio over the rounds and its range.
    t_nn, t_ours = [], []
    for _ in range(rounds):
        t_nn.append(_median(f_nn, min_run_time))
        t_ours.append(_median(f_ours, min_run_time))
    ratios = sorted(a / b for a, b in zip(t_nn, t_ours))
    return {
        "name": name,
        "cell": cell,
        "T": T,
        "B": B,
        "input": I,
        "hidden": H,
        "mode": mode,
        "packed": packed,
        "goal": goal,
        "torch_nn_s": statistics.median(t_nn),
        "fastrnn_s": statistics.median(t_ours),
        "speedup": statistics.median(ratios),
        "speedup_min": ratios[0],
        "speedup_max": ratios[-1],
        "rounds": rounds,
        "torch_nn_rounds_s": t_nn,
        "fastrnn_rounds_s": t_ours,
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.cpu_table")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    header = {
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "backend": a.backend,
        "commit": commit,
        "rounds": a.rounds,
        "min_run_time_s": a.min_run_time,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"torch {header['torch']}, {header['threads']} threads, fastrnn backend {a.backend}")
    print(f"{'case':<34} {'torch.nn ms':>12} {'fastrnn ms':>11} {'speedup':>8} {'(range)':>13} {'goal':>6}")
    rows = []
    for row in ROWS:
        r = measure(row, a.backend, a.min_run_time, a.rounds)
        rows.append(r)
        ok = "ok" if r["speedup"] >= r["goal"] else "MISS"
        print(
            f"{r['name']:<34} {r['torch_nn_s'] * 1e3:>12.3f} {r['fastrnn_s'] * 1e3:>11.3f} "
            f"{r['speedup']:>7.2f}x  ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}x) {r['goal']:>5.1f}x {ok}",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
