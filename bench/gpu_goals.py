"""The persistent-kernel goal table from a ``python -m bench --suite gpu_goals`` run.

    python -m bench.gpu_goals bench/results/<device>-gpu_goals/results.json

Every ratio is t(torch.nn on cuDNN) / t(fastrnn) from the same run; fp32 rows ran at the
run's ``torch.backends.cudnn.allow_tf32`` (in the header), the same for both sides.
"""

from __future__ import annotations

import json
import statistics
import sys

# (what, selector, goal)
GOALS = [
    ("LSTM bf16+fp32 fwd", lambda r: r["cell"] == "lstm" and r["sweep"] == "goal" and r["mode"] == "fwd", 1.5),
    ("LSTM bf16+fp32 fwd+bwd", lambda r: r["cell"] == "lstm" and r["sweep"] == "goal" and r["mode"] == "fwdbwd", 1.3),
    ("LSTM fp16 B=16 T=1024 H=768 fwd", lambda r: r["sweep"] == "flashrnn" and r["mode"] == "fwd", 1.0),
    ("LSTM fp16 B=16 T=1024 H=768 fwd+bwd", lambda r: r["sweep"] == "flashrnn" and r["mode"] == "fwdbwd", 1.0),
    ("GRU bf16+fp32 fwd+bwd", lambda r: r["cell"] == "gru" and r["sweep"] == "goal" and r["mode"] == "fwdbwd", 2.0),
]
STEP_GOAL_US = 2.0


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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        data = json.load(f)
    h = data["header"]
    print(
        f"{h['device_name']} | torch {h['torch']} | triton {h['triton']} | commit {h['commit'][:10]} | "
        f"cudnn.allow_tf32={h.get('cudnn_allow_tf32')}"
    )
    report(data["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
