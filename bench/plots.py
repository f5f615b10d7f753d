"""PNG plots of a results.json: speedup against torch.nn vs hidden size (per batch size,
one panel per cell and mode), and time vs sequence length."""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# colour = who (fastrnn stands out, torch.nn is black), line style = batch size
COLOR = {
    "fastrnn[cpp]": "tab:red",
    "fastrnn[triton]": "tab:red",
    "jit_premul": "tab:blue",
    "python_loop": "tab:gray",
    "torch.nn": "black",
}
DASH = ["-", "--", ":", "-."]


def _ratio_axis(ax):
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _grid(rows, sweep):
    cells = sorted({r["cell"] for r in rows if r["sweep"] == sweep})
    modes = [m for m in ("fwd", "fwdbwd") if any(r["mode"] == m and r["sweep"] == sweep for r in rows)]
    fig, axes = plt.subplots(len(cells), len(modes), figsize=(6.5 * len(modes), 4.2 * len(cells)), squeeze=False)
    return cells, modes, fig, axes


def speedup_vs_hidden(rows, header, path):
    cells, modes, fig, axes = _grid(rows, "hidden")
    batches = sorted({r["B"] for r in rows if r["sweep"] == "hidden"})
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = [r for r in rows if r["sweep"] == "hidden" and r["cell"] == cell and r["mode"] == mode]
            for provider in sorted({r["provider"] for r in sel} - {"torch.nn"}):
                for dash, b in zip(DASH, batches):
                    pts = sorted(
                        (r["H"], r["speedup_vs_torch_nn"])
                        for r in sel
                        if r["provider"] == provider and r["B"] == b and r.get("speedup_vs_torch_nn")
                    )
                    if pts:
                        ax.plot(
                            *zip(*pts),
                            dash,
                            color=COLOR.get(provider),
                            marker="o",
                            ms=3,
                            lw=2 if provider.startswith("fastrnn") else 1,
                            label=f"{provider}, batch {b}",
                        )
            ax.axhline(1.0, color="black", lw=1.2, label="torch.nn (= 1x)")
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            _ratio_axis(ax)
            ax.set_xlabel("hidden size (= input size)")
            ax.set_ylabel("speedup over torch.nn (higher is faster)")
            ax.set_title(
                f"{cell.upper()} {'forward' if mode == 'fwd' else 'forward+backward'}, T={sel[0]['T'] if sel else '?'}"
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"fastrnn vs torch.nn on {header['device_name']} (torch {header['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_vs_seq(rows, header, path):
    cells, modes, fig, axes = _grid(rows, "seq")
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = [r for r in rows if r["sweep"] == "seq" and r["cell"] == cell and r["mode"] == mode]
            for provider in sorted({r["provider"] for r in sel}):
                pts = sorted((r["T"], r["median_s"] * 1e3) for r in sel if r["provider"] == provider)
                ax.plot(
                    *zip(*pts),
                    "-",
                    marker="o",
                    ms=3,
                    label=provider,
                    color=COLOR.get(provider),
                    lw=2 if provider.startswith("fastrnn") else 1,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
            ax.set_xticks(sorted({r["T"] for r in sel}))
            ax.set_xlabel("sequence length T")
            ax.set_ylabel("median time per call (ms, lower is faster)")
            if sel:
                ax.set_title(
                    f"{cell.upper()} {'forward' if mode == 'fwd' else 'forward+backward'}, "
                    f"B={sel[0]['B']}, H={sel[0]['H']}"
                )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"Time vs sequence length on {header['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results_json: str, out_dir: str) -> list[str]:
    with open(results_json) as f:
        data = json.load(f)
    paths = [os.path.join(out_dir, "speedup_vs_hidden.png"), os.path.join(out_dir, "time_vs_seq.png")]
    speedup_vs_hidden(data["rows"], data["header"], paths[0])
    time_vs_seq(data["rows"], data["header"], paths[1])
    return paths


if __name__ == "__main__":
    print("\n".join(plot(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(sys.argv[1]) or ".")))
