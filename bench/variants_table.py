"""``python -m bench.variants_table``: fastrnn's LSTM variants against what users write today.

For PeepholeLSTM and LayerNormLSTM at each (T, B, I, H) of ``configs.VARIANT_SHAPES``, forward
(no_grad) and forward+backward (a random upstream gradient through the output), on CPU:

* t(TorchScript loop) / t(fastrnn variant): the peer ``jit_premul`` of bench/providers.py on
  the same parameter tensors; goal >= 10x / 5x / 3x from the small to the large shape;
* t(fastrnn variant) / t(fastrnn.LSTM of the same size, same backend): what the variant's
  extra terms cost; goal <= 1.3x.

The three alternate round after round (``--rounds``, one blocked_autorange median each, as
bench/cpu_table.py does on this drifting shared machine); a ratio is the median of the
per-round ratios, with their range. The header gives the CPU model, the thread count and the
load average before and after. ``--json PATH`` keeps the raw numbers.
``python -m bench --suite variants`` times the same rows through the common runner (one
median per provider, results.json, peak memory) and ends with :func:`report`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

import torch
import torch.utils.benchmark as tb

from .configs import VARIANTS, Config, variant_configs
from .runner import _workload, device_name

# t(TorchScript loop) / t(fastrnn variant) at least this, per (T, B, I, H)
GOAL_VS_PEER = {(100, 1, 32, 64): 10.0, (100, 8, 64, 128): 5.0, (100, 32, 256, 256): 3.0}
# t(fastrnn variant) / t(fastrnn.LSTM) at most this
GOAL_VS_LSTM = 1.3
TITLE = {"peephole_lstm": "Peephole", "layernorm_lstm": "LayerNorm"}


def _name(cfg: Config) -> str:
    mode = "fwd" if cfg.mode == "fwd" else "fwd+bwd"
    return f"{TITLE[cfg.cell]} ({cfg.T},{cfg.B},{cfg.I},{cfg.H}) {mode}"


def _head() -> str:
    return (
        f"{'case':<32} {'variant ms':>10} {'TorchScript':>11} {'LSTM ms':>9}   "
        f"{'TS/variant (range)':<22} {'goal':>9}   {'variant/LSTM (range)':<22} {'goal':>9}"
    )


def _line(cfg, t_var, t_peer, t_lstm, vs_peer, vs_lstm) -> str:
    """vs_peer, vs_lstm: (median, min, max) of the ratio over rounds, (ratio,) for one
    measurement, or None when a side is missing."""

    def ratio(r):
        if r is None:
            return "-"
        return f"{r[0]:6.2f}x" + (f" ({r[1]:.2f}-{r[2]:.2f})" if len(r) == 3 else "")

    def ms(t):
        return "-" if t is None else f"{t * 1e3:.3f}"

    goal_peer = GOAL_VS_PEER.get((cfg.T, cfg.B, cfg.I, cfg.H))
    ok_peer = "" if vs_peer is None or goal_peer is None else ("ok" if vs_peer[0] >= goal_peer else "MISS")
    ok_lstm = "" if vs_lstm is None else ("ok" if vs_lstm[0] <= GOAL_VS_LSTM else "MISS")
    goal_peer_s = "" if goal_peer is None else f">={goal_peer:g}x"
    goal_lstm_s = f"<={GOAL_VS_LSTM:g}x"
    return (
        f"{_name(cfg):<32} {ms(t_var):>10} {ms(t_peer):>11} {ms(t_lstm):>9}   "
        f"{ratio(vs_peer):<22} {goal_peer_s:>5} {ok_peer:<4}  {ratio(vs_lstm):<22} {goal_lstm_s:>5} {ok_lstm}"
    )


def report(rows) -> None:
    """The ratio table of a ``python -m bench --suite variants`` run (one median per provider)."""
    fasts = sorted({r["provider"] for r in rows if r["provider"].startswith("fastrnn[")})
    if not fasts:
        print("\nno fastrnn provider ran: no ratios (python -c 'import fastrnn; print(fastrnn.available_backends())')")
    for fast in fasts:
        lstm = "fastrnn.LSTM" + fast[len("fastrnn") :]
        print(f"\n{fast}: ratios of the medians above")
        print(_head())
        seen = []
        for r in rows:
            cfg = Config(**{k: r[k] for k in ("cell", "T", "B", "I", "H", "mode", "sweep", "dtype")})
            if r["sweep"] != "variants" or cfg in seen:
                continue
            seen.append(cfg)
            t = {
                q["provider"]: q["median_s"]
                for q in rows
                if (q["cell"], q["mode"], q["T"], q["B"], q["I"], q["H"], q["dtype"])
                == (cfg.cell, cfg.mode, cfg.T, cfg.B, cfg.I, cfg.H, cfg.dtype)
            }
            t_var, t_peer, t_lstm = t.get(fast), t.get("jit_premul"), t.get(lstm)
            vs_peer = (t_peer / t_var,) if t_var and t_peer else None
            vs_lstm = (t_var / t_lstm,) if t_var and t_lstm else None
            print(_line(cfg, t_var, t_peer, t_lstm, vs_peer, vs_lstm))


def _median(fn, min_run_time):
    return tb.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def _spread(xs):
    s = sorted(xs)
    return statistics.median(s), s[0], s[-1]


def measure(cfg: Config, backend: str, min_run_time: float, rounds: int) -> dict:
    cpu = torch.device("cpu")
    names = (f"fastrnn[{backend}]", "jit_premul", f"fastrnn.LSTM[{backend}]")
    fns = [_workload(cfg, n, cpu) for n in names]
    # warm-up: TorchScript's profiling executor optimises the loop after its first calls
    for _ in range(3):
        for f in fns:
            f()
    times = [[] for _ in names]
    for _ in range(rounds):
        for f, ts in zip(fns, times):
            ts.append(_median(f, min_run_time))
    t_var, t_peer, t_lstm = times
    return {
        **cfg.asdict(),
        "backend": backend,
        "variant_s": statistics.median(t_var),
        "torchscript_s": statistics.median(t_peer),
        "lstm_s": statistics.median(t_lstm),
        "torchscript_over_variant": _spread([p / v for p, v in zip(t_peer, t_var)]),
        "variant_over_lstm": _spread([v / s for v, s in zip(t_var, t_lstm)]),
        "goal_vs_torchscript": GOAL_VS_PEER.get((cfg.T, cfg.B, cfg.I, cfg.H)),
        "goal_vs_lstm": GOAL_VS_LSTM,
        "rounds_s": {"variant": t_var, "torchscript": t_peer, "lstm": t_lstm},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.variants_table")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--cells", default=",".join(VARIANTS))
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--min-run-time", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    cells = [c for c in a.cells.split(",") if c]
    if not set(cells) <= set(VARIANTS):
        p.error(f"--cells takes {', '.join(VARIANTS)}")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    load_before = os.getloadavg()
    header = {
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "backend": a.backend,
        "commit": commit,
        "rounds": a.rounds,
        "min_run_time_s": a.min_run_time,
        "load_average_before": load_before,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(
        f"{header['device']} | {header['threads']} threads of {header['cpus']} CPUs | torch {header['torch']} | "
        f"fastrnn backend {a.backend} | load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    print(_head())
    rows = []
    for cfg in variant_configs(cells, [m for m in a.modes.split(",") if m]):
        r = measure(cfg, a.backend, a.min_run_time, a.rounds)
        rows.append(r)
        print(
            _line(
                cfg,
                r["variant_s"],
                r["torchscript_s"],
                r["lstm_s"],
                r["torchscript_over_variant"],
                r["variant_over_lstm"],
            ),
            flush=True,
        )
    header["load_average_after"] = os.getloadavg()
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*header["load_average_after"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
