"""The persistent-kernel goal table from a ``python -m bench --suite gpu_goals`` run.

    python -m bench.gpu_goals bench/results/<device>-gpu_goals/results.json

Every ratio is t(torch.nn on cuDNN) / t(fastrnn) from the same run; fp32 rows ran at the
run's cuDNN RNN TF32 setting (``cudnn_rnn_tf32`` in the header), the same for both sides. The LSTM
variants (torch.nn has none) are read as t(variant) / t(LSTM) against the same run's LSTM rows.
"""

from __future__ import annotations

import json
import statistics
import sys

from .configs import VARIANTS

# (what, selector, goal)
GOALS = [
    ("LSTM bf16+fp32 fwd", lambda r: r["cell"] == "lstm" and r["sweep"] == "goal" and r["mode"] == "fwd", 1.5),
    ("LSTM bf16+fp32 fwd+bwd", lambda r: r["cell"] == "lstm" and r["sweep"] == "goal" and r["mode"] == "fwdbwd", 1.3),
    ("LSTM fp16 B=16 T=1024 H=768 fwd", lambda r: r["sweep"] == "flashrnn" and r["mode"] == "fwd", 1.0),
    ("LSTM fp16 B=16 T=1024 H=768 fwd+bwd", lambda r: r["sweep"] == "flashrnn" and r["mode"] == "fwdbwd", 1.0),
    ("GRU bf16+fp32 fwd+bwd", lambda r: r["cell"] == "gru" and r["sweep"] == "goal" and r["mode"] == "fwdbwd", 2.0),
]
STEP_GOAL_US = 2.0
# PeepholeLSTM and LayerNormLSTM: t(variant) / t(fastrnn LSTM, same provider and config) at most this
VARIANT_GOAL = 1.3


def _fast(rows):
    return sorted({r["provider"] for r in rows if r["provider"].startswith("fastrnn")})


def report(rows) -> None:
    for prov in _fast(rows):
        print(f"\n{prov}: t(torch.nn) / t(fastrnn), min / median / max over the configs, configs meeting the goal")
        for what, sel, goal in GOALS:
            ratios = [
                r["speedup_vs_torch_nn"]
                for r in rows
                if sel(r) and r["provider"] == prov and r.get("speedup_vs_torch_nn")
            ]
            if not ratios:
                continue
            ok = sum(x >= goal for x in ratios)
            print(
                f"  {what:<38} {min(ratios):6.2f}x {statistics.median(ratios):6.2f}x {max(ratios):6.2f}x"
                f"   {ok}/{len(ratios)} >= {goal}x"
            )
        for dtype in ("bfloat16", "float32"):
            t = {
                r["T"]: r["median_s"]
                for r in rows
                if r["provider"] == prov
                and r["cell"] == "lstm"
                and r["mode"] == "fwd"
                and r["B"] == 16
                and r["H"] == 512
                and r["dtype"] == dtype
                and r["sweep"] == "goal"
            }
            if 100 in t and 1024 in t:
                us = (t[1024] - t[100]) / 924 * 1e6
                print(f"  per-step latency LSTM {dtype} B=16 H=512 fwd: {us:.2f} us (goal <= {STEP_GOAL_US} us)")
        _report_variants(rows, prov)
    _report_fallbacks(rows)


def _report_fallbacks(rows) -> None:
    """Pinned rows whose calls ran another kernel shape (a forced persistent shape where no
    persistent grid fits runs the step kernels): their times are the other shape's."""
    off = [
        r
        for r in rows
        if r["provider"].startswith("fastrnn[triton:")
        and r.get("kernel_shapes")
        and r["kernel_shapes"] != r["provider"][len("fastrnn[triton:") : -1]
    ]
    if off:
        print(f"\n{len(off)} pinned rows ran other kernel shapes than their provider names (kernel_shapes):")
        for r in off[:20]:
            where = f"{r['cell']} {r['mode']} {r['dtype']} T={r['T']} B={r['B']} H={r['H']}"
            print(f"  {r['provider']} {where}: {r['kernel_shapes']}")


def _report_variants(rows, prov) -> None:
    """t(variant) / t(LSTM) per config: against the same fastrnn provider's LSTM row (the
    variant's extra cost) and against cuDNN's LSTM row of the same run (no torch.nn variant)."""

    def key(r):
        return (r["mode"], r["dtype"], r["T"], r["B"], r["I"], r["H"])

    lstm = {
        key(r): r["median_s"] for r in rows if r["cell"] == "lstm" and r["sweep"] == "goal" and r["provider"] == prov
    }
    cudnn = {
        key(r): r["median_s"]
        for r in rows
        if r["cell"] == "lstm" and r["sweep"] == "goal" and r["provider"] == "torch.nn"
    }
    for cell in VARIANTS:
        for mode in ("fwd", "fwdbwd"):
            mine = [r for r in rows if r["cell"] == cell and r["mode"] == mode and r["provider"] == prov]
            if not mine:
                continue
            what = f"{cell} bf16+fp32 {'fwd' if mode == 'fwd' else 'fwd+bwd'}"
            vs_lstm = [r["median_s"] / lstm[key(r)] for r in mine if key(r) in lstm]
            vs_cudnn = [r["median_s"] / cudnn[key(r)] for r in mine if key(r) in cudnn]
            if vs_lstm:
                ok = sum(x <= VARIANT_GOAL for x in vs_lstm)
                print(
                    f"  {what:<38} t/t(LSTM) {min(vs_lstm):6.2f}x {statistics.median(vs_lstm):6.2f}x "
                    f"{max(vs_lstm):6.2f}x   {ok}/{len(vs_lstm)} <= {VARIANT_GOAL}x"
                )
            if vs_cudnn:
                print(
                    f"  {what:<38} t/t(cuDNN LSTM) {min(vs_cudnn):6.2f}x {statistics.median(vs_cudnn):6.2f}x "
                    f"{max(vs_cudnn):6.2f}x"
                )
            if not vs_lstm and not vs_cudnn:
                print(f"  {what:<38} {len(mine)} rows, no LSTM row of the same configs in this run")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        data = json.load(f)
    h = data["header"]
    print(
        f"{h['device_name']} | torch {h['torch']} | triton {h['triton']} | commit {h['commit'][:10]} | "
        f"cuDNN RNN TF32={h.get('cudnn_rnn_tf32', h.get('cudnn_allow_tf32'))}"
    )
    report(data["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
