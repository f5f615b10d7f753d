"""What every example shares: its command line, the two implementations, timing, a progress
bar, and writing the JSON and PNG.

Each example trains one model per implementation: ``fastrnn`` always, ``torch`` (torch.nn)
too with ``--compare``. Both are built from the same seed, so a drop-in model starts from the
same weights and sees the same batches; its loss curves may then differ only by float rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fastrnn
from bench.runner import device_name

IMPLS = ("torch", "fastrnn")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke run (under a minute on 2 CPU cores)")
    p.add_argument("--compare", action="store_true", help="also train the torch.nn model, same seed and batches")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "cpp", "triton", "reference"),
        help="the fastrnn backend (default auto: cpp on CPU, triton on CUDA)",
    )
    p.add_argument("--out", default=None, help="where the PNG and JSON go (default examples/results)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclass
class Run:
    """One invocation: parsed arguments plus what the examples need from them."""

    args: argparse.Namespace
    name: str
    device: torch.device
    out: Path
    impls: tuple[str, ...]
    started: float = field(default_factory=time.perf_counter)

    def rnn(self, impl: str, kind: str, *args, **kwargs) -> torch.nn.Module:
        """``kind`` ("LSTM", "GRUCell", "PeepholeLSTM", ...) from torch.nn or fastrnn, on the device.

        fastrnn's modules subclass their torch.nn twins and initialise the same way, so
        under the same seed both implementations start from the same weights."""
        if impl == "torch":
            module = getattr(torch.nn, kind)(*args, **kwargs)
        else:
            module = getattr(fastrnn, kind)(*args, backend=self.args.backend, **kwargs)
        return module.to(self.device)

    def progress(self, iterable, total: int | None = None, desc: str = ""):
        return Progress(iterable, total=total, desc=desc, enabled=not self.args.no_progress)

    def save(self, payload: dict, fig=None) -> Path:
        """Writes <out>/<name>.json (payload plus the run's configuration) and <name>.png."""
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "example": self.name,
            "config": {
                "quick": self.args.quick,
                "device": str(self.device),
                "backend": self.args.backend,
                "fastrnn_backend_used": backend_used(self.args.backend, self.device),
                "seed": self.args.seed,
                "torch": torch.__version__,
                "device_name": device_name(self.device),
                "cpu": device_name(torch.device("cpu")),
                "threads": torch.get_num_threads(),
                "python": platform.python_version(),
            },
            **payload,
            "wall_seconds": round(time.perf_counter() - self.started, 2),
        }
        path = self.out / f"{self.name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        if fig is not None:
            fig.savefig(self.out / f"{self.name}.png", dpi=110, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig)
        print(f"wrote {path} and {path.with_suffix('.png')}" if fig is not None else f"wrote {path}")
        return path


def start(name: str, args: argparse.Namespace) -> Run:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    torch.manual_seed(args.seed)
    impls = IMPLS if args.compare else ("fastrnn",)
    return Run(args=args, name=name, device=device, out=out, impls=impls)


def backend_used(backend: str, device: torch.device) -> str:
    """The backend "auto" (or FASTRNN_BACKEND) resolves to for this device."""
    if backend != "auto":
        return backend
    env = os.environ.get("FASTRNN_BACKEND", "auto")
    if env != "auto":
        return env
    return "triton" if device.type == "cuda" else "cpp"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates the seconds spent inside ``with watch:`` blocks (synchronising CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds += time.perf_counter() - self._t0


class Progress:
    """A one-line progress bar on stderr: count, rate and the latest ``postfix`` values."""

    def __init__(self, iterable, total=None, desc="", enabled=True, width=24):
        self.iterable, self.desc, self.width = iterable, desc, width
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.enabled = enabled
        self.postfix = ""
        self._last = 0.0

    def set(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

    def _draw(self, n: int, t0: float, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        rate = n / max(now - t0, 1e-9)
        if self.total:
            done = int(self.width * n / self.total)
            bar = f"[{'#' * done}{'.' * (self.width - done)}] {n}/{self.total}"
        else:
            bar = f"{n}"
        sys.stderr.write(f"\r{self.desc} {bar} {rate:.1f} it/s {self.postfix}\033[K")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def __iter__(self):
        t0 = time.perf_counter()
        n = 0
        for item in self.iterable:
            yield item
            n += 1
            if self.enabled:
                self._draw(n, t0)
        if self.enabled:
            self._draw(n, t0, final=True)


def figure(nrows: int = 1, ncols: int = 1, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, **kwargs)


def curve_gap(a: list[float], b: list[float]) -> float:
    """Largest relative difference between two curves, point by point."""
    if len(a) != len(b):
        raise ValueError(f"curves differ in length: {len(a)} vs {len(b)}")
    return max((abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b, strict=True)), default=0.0)


def timing_summary(seconds: dict[str, list[float]]) -> dict:
    """Median seconds per epoch per implementation, and torch.nn's over fastrnn's."""
    med = {impl: sorted(s)[len(s) // 2] for impl, s in seconds.items() if s}
    summary = {"seconds_per_epoch": med}
    if "torch" in med and "fastrnn" in med and med["fastrnn"] > 0:
        summary["speedup_vs_torch"] = round(med["torch"] / med["fastrnn"], 3)
    return summary


def print_timing(summary: dict) -> None:
    med = summary["seconds_per_epoch"]
    line = ", ".join(f"{impl}: {s * 1e3:.1f} ms/epoch" for impl, s in med.items())
    if "speedup_vs_torch" in summary:
        line += f"; fastrnn {summary['speedup_vs_torch']:.2f}x torch.nn"
    print(line)
