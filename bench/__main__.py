"""``python -m bench``: fastrnn against its peers on the best device present.

    python -m bench [--device cpu|cuda] [--cells lstm,gru,rnn] [--modes fwd,fwdbwd] [--quick] [--out DIR]
    python -m bench --suite gpu_goals          # the persistent-kernel goal grid (GPU)
    python -m bench --suite variants           # PeepholeLSTM, LayerNormLSTM vs TorchScript and fastrnn.LSTM

Prints a table, writes DIR/results.json (header: device, versions, commit, date; one row
per config and provider: median and 20/80% quantiles, tokens/s, speedup over torch.nn, peak
memory) and PNG plots into DIR. Default DIR: bench/results/<device>/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

from . import plots
from .configs import VARIANTS, configs, gpu_goal_configs, shape_key, variant_configs
from .providers import providers
from .runner import header, measure


def _fmt_bytes(n):
    return f"{n / 2**20:.1f}M" if n is not None else "-"


def _fmt_ratio(x):
    return f"{x:.2f}x" if x else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--cells",
        default=None,
        help="default: lstm,gru,rnn (suite default), all five (gpu_goals), peephole_lstm,layernorm_lstm (variants)",
    )
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--quick", action="store_true", help="a small sweep (under two minutes on a 2-core CPU)")
    p.add_argument("--out", default=None, help="output folder (default bench/results/<device>)")
    p.add_argument("--min-run-time", type=float, default=None, help="CPU seconds per measurement")
    p.add_argument("--suite", choices=["default", "gpu_goals", "variants"], default="default")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    default_cells = {"default": ["lstm", "gru", "rnn"], "variants": list(VARIANTS)}
    default_cells["gpu_goals"] = default_cells["default"] + default_cells["variants"]
    cells = [c for c in a.cells.split(",") if c] if a.cells else default_cells[a.suite]
    # the default suite's sweep, plots and speedups are against torch.nn, which has no variant
    if a.suite == "default" and set(cells) & set(VARIANTS):
        p.error(f"{', '.join(VARIANTS)} run in --suite variants (or gpu_goals)")
    if a.suite == "variants" and not set(cells) <= set(VARIANTS):
        p.error(f"--suite variants runs {', '.join(VARIANTS)}")
    modes = [m for m in a.modes.split(",") if m]
    hdr = header(device)
    folder = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{device.type}-{hdr['device_name']}").strip("-")
    if a.suite != "default":
        folder += f"-{a.suite}"
    out = a.out or os.path.join(os.path.dirname(__file__), "results", folder)
    os.makedirs(out, exist_ok=True)
    min_run = a.min_run_time or (0.05 if a.quick else 0.1)
    if a.suite == "gpu_goals":
        suite = gpu_goal_configs(cells, modes)
    elif a.suite == "variants":
        suite = variant_configs(cells, modes)
    else:
        suite = configs(device.type, cells, modes, a.quick)
    todo = [(cfg, prov) for cfg in suite for prov in providers(cfg.cell, device, a.suite)]
    print(f"{hdr['device_name']} | torch {hdr['torch']} | triton {hdr['triton']} | {len(todo)} measurements -> {out}")
    rows, done, failed, t0 = [], {}, [], time.time()
    for k, (cfg, prov) in enumerate(todo, 1):
        print(
            f"\r[{k}/{len(todo)}] {cfg.label()} {prov:<18} {time.time() - t0:6.0f}s",
            end="",
            file=sys.stderr,
            flush=True,
        )
        key = (shape_key(cfg), prov)
        if prov.startswith("fastrnn.LSTM["):  # one LSTM row serves both variants of a shape
            key = (("lstm", *shape_key(cfg)[1:]), prov)
        if key not in done:  # an anchor that lies on a sweep is measured once
            try:
                done[key] = measure(cfg, prov, device, min_run)
            except Exception as e:
                # one provider failing on one shape (a kernel that declines a size) must not
                # lose the rest of a long GPU run: reported below, and the exit status is 1
                done[key] = None
                failed.append(f"{cfg.label()} {prov}: {type(e).__name__}: {e}")
                print(f"\nFAILED {failed[-1]}", file=sys.stderr)
        if done[key] is not None:
            rows.append({**done[key], "cell": cfg.cell, "sweep": cfg.sweep})
    print(file=sys.stderr)

    def peer_key(r):
        return (r["cell"], r["mode"], r["T"], r["B"], r["I"], r["H"], r["sweep"], r["dtype"])

    base = {peer_key(r): r["median_s"] for r in rows if r["provider"] == "torch.nn"}
    for r in rows:
        t = base.get(peer_key(r))
        r["speedup_vs_torch_nn"] = t / r["median_s"] if t else None
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"header": hdr, "rows": rows}, f, indent=1)
    print(
        f"{'config':<52} {'provider':<18} {'median ms':>10} {'p20-p80 ms':>17} {'Mtok/s':>8} {'vs nn':>7} {'peak':>8}"
    )
    for r in rows:
        dt = "" if r["dtype"] == "float32" else f" {r['dtype']}"
        label = f"{r['cell']} {r['mode']}{dt} T={r['T']} B={r['B']} H={r['H']} ({r['sweep']})"
        print(
            f"{label:<52} {r['provider']:<18} {r['median_s'] * 1e3:>10.3f} "
            f"{r['p20_s'] * 1e3:>8.3f}-{r['p80_s'] * 1e3:<8.3f} {r['tokens_per_s'] / 1e6:>8.3f} "
            f"{_fmt_ratio(r['speedup_vs_torch_nn']):>7} {_fmt_bytes(r['peak_bytes']):>8}"
        )
    if a.suite == "default":
        for path in plots.plot(os.path.join(out, "results.json"), out):
            print("wrote", path)
    elif a.suite == "variants":
        from . import variants_table

        variants_table.report(rows)
    else:
        from . import gpu_goals

        gpu_goals.report(rows)
    print("wrote", os.path.join(out, "results.json"), f"({time.time() - t0:.0f}s)")
    for f in failed:
        print("FAILED", f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
