"""``python -m bench``: fastrnn against its peers on the best device present.

    python -m bench [--device cpu|cuda] [--cells lstm,gru,rnn] [--modes fwd,fwdbwd] [--quick] [--out DIR]
    python -m bench --suite gpu_goals          # the persistent-kernel goal grid (GPU)
    python -m bench --suite variants           # PeepholeLSTM, LayerNormLSTM vs TorchScript and fastrnn.LSTM
    python -m bench --suite gpu_goals --dry-run  # every config at tiny sizes, Triton interpreter on CPU

Prints a table, writes DIR/results.json (header: device, versions, commit, date; one row
per config and provider: median and 20/80% quantiles, tokens/s, speedup over torch.nn, peak
memory; "errors": the configs a provider failed on, with the exception) and PNG plots into
DIR. Default DIR: bench/results/<device>/. results.json is rewritten after every measurement
("complete": false until the run ends), so an interrupted run keeps what it measured.
``--dry-run`` runs every config of the suite at tiny sizes (configs.dry_run) through the
Triton interpreter on CPU, one call each, into bench/out/dry-run-<suite>/: it checks that the
suite, its providers and its results file work before GPU time is spent; its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch

from . import plots
from .configs import VARIANTS, configs, dry_run, gpu_goal_configs, shape_key, variant_configs
from .providers import providers
from .runner import header, measure


def _fmt_bytes(n):
    return f"{n / 2**20:.1f}M" if n is not None else "-"


def _fmt_ratio(x):
    return f"{x:.2f}x" if x else "-"


def _write(path: str, hdr: dict, rows: list, errors: list, complete: bool) -> None:
    """results.json, replaced atomically: a run stopped at any point leaves a whole file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"header": hdr, "complete": complete, "rows": rows, "errors": errors}, f, indent=1)
    os.replace(tmp, path)


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
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="every config at tiny sizes through the Triton interpreter on CPU, one call each (checks the suite)",
    )
    a = p.parse_args(argv)
    if a.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        # the interpreter must be chosen before the kernels are imported: run again with it
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        args = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, "-m", "bench", *args], env=env).returncode
    if a.dry_run:
        a.device = "cpu"
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
    if a.dry_run:
        hdr["dry_run"] = True
        default_out = os.path.join(os.path.dirname(__file__), "out", f"dry-run-{a.suite}")
    else:
        default_out = os.path.join(os.path.dirname(__file__), "results", folder)
    out = a.out or default_out
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    min_run = a.min_run_time or (0.05 if a.quick else 0.1)
    if a.suite == "gpu_goals":
        suite = gpu_goal_configs(cells, modes)
    elif a.suite == "variants":
        suite = variant_configs(cells, modes)
    else:
        suite = configs(device.type, cells, modes, a.quick)
    if a.dry_run:
        suite = [dry_run(cfg) for cfg in suite]
    todo = [(cfg, prov) for cfg in suite for prov in providers(cfg.cell, device, a.suite, a.dry_run)]
    print(f"{hdr['device_name']} | torch {hdr['torch']} | triton {hdr['triton']} | {len(todo)} measurements -> {out}")
    rows, done, failed, errors, t0 = [], {}, [], [], time.time()
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
                done[key] = measure(cfg, prov, device, min_run, a.dry_run)
            except Exception as e:
                # one provider failing on one shape (a kernel that declines a size) must not
                # lose the rest of a long GPU run: recorded, reported below, exit status 1
                done[key] = None
                failed.append(f"{cfg.label()} {prov}: {type(e).__name__}: {e}")
                errors.append({**cfg.asdict(), "provider": prov, "error": f"{type(e).__name__}: {e}"})
                print(f"\nFAILED {failed[-1]}", file=sys.stderr)
            else:
                rows.append({**done[key], "cell": cfg.cell, "sweep": cfg.sweep})
            _write(results_path, hdr, rows, errors, complete=False)
        elif done[key] is not None:
            rows.append({**done[key], "cell": cfg.cell, "sweep": cfg.sweep})
    print(file=sys.stderr)

    def peer_key(r):
        return (r["cell"], r["mode"], r["T"], r["B"], r["I"], r["H"], r["sweep"], r["dtype"])

    base = {peer_key(r): r["median_s"] for r in rows if r["provider"] == "torch.nn"}
    for r in rows:
        t = base.get(peer_key(r))
        r["speedup_vs_torch_nn"] = t / r["median_s"] if t else None
    _write(results_path, hdr, rows, errors, complete=True)
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
    if a.dry_run:
        print(f"dry run: {len(rows)} rows, {len(errors)} errors; interpreter times, no goal table or plots")
    elif a.suite == "default":
        for path in plots.plot(results_path, out):
            print("wrote", path)
    elif a.suite == "variants":
        from . import variants_table

        variants_table.report(rows)
    else:
        from . import gpu_goals

        gpu_goals.report(rows)
    print("wrote", results_path, f"({time.time() - t0:.0f}s)")
    for f in failed:
        print("FAILED", f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
