"""Timing and memory measurement of one (config, provider) pair, and the results header."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.utils.benchmark as tb

import fastrnn

from .configs import VARIANTS, Config
from .providers import FAST, NN, build, kernel_shape_of


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "fastrnn": fastrnn.__version__,
        "cudnn_rnn_tf32": fastrnn.numerics.cudnn_rnn_tf32() if device.type == "cuda" else None,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _workload(cfg: Config, provider: str, device: torch.device, seed: int = 0):
    """The callable to time, on fresh random inputs (never zeros) and shared weights."""
    torch.manual_seed(seed)
    dtype = getattr(torch, cfg.dtype)
    # the weights every provider shares: torch.nn's layer, or fastrnn's for a cell torch.nn lacks
    ref = (FAST[cfg.cell] if cfg.cell in VARIANTS else NN[cfg.cell])(cfg.I, cfg.H).to(device, dtype)
    model = build(provider, cfg.cell, ref)
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=device, dtype=dtype)
    g = torch.randn(cfg.T, cfg.B, cfg.H, device=device, dtype=dtype)
    if cfg.mode == "fwd":

        def run():
            with torch.no_grad():
                model(x)
    else:
        params = list(model.parameters())

        def run():
            for p in params:
                p.grad = None
            model(x)[0].backward(g)

    shape = kernel_shape_of(provider)
    if shape is None:
        return run

    forced_shape = _triton_kernels("_common").forced_shape

    def fn():  # the Triton kernel shape is read per call from the environment
        with forced_shape(shape):
            run()

    return fn


# What the CPU profiler's native code prints on every use: kineto's stage markers and the
# allocator's note about blocks allocated before profiling began (they are not in the sum).
_PROFILER_NOISE = re.compile(
    r"profiler_start|profiler_stop|Completed Stage|CPUAllocator\.cpp.*allocated before the profiling"
)


@contextlib.contextmanager
def _profiler_noise_filtered():
    """Native stderr (file descriptor 2) goes through a file for the duration; the lines that
    are not the profiler's own chatter are written back, so real errors still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines() if not _PROFILER_NOISE.search(ln)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _peak_bytes(fn, device: torch.device):
    """Peak bytes of tensors allocated during one call, above what was live before it.
    CUDA: max_memory_allocated. CPU: the profiler attributes each op's own allocations to
    it (self_cpu_memory_usage) and frees outside ops to "[memory]" events; their running
    sum in time order peaks where the call's live tensor memory does."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with (
        _profiler_noise_filtered(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def measure(cfg: Config, provider: str, device: torch.device, min_run_time: float, dry_run: bool = False) -> dict:
    """One row: median and 20/80% quantiles of the workload's time, tokens/s, peak memory.
    ``dry_run``: one timed call after the warm-up and no memory profile (exercises the
    provider on the config; the time means nothing)."""
    fn = _workload(cfg, provider, device)
    shapes = None
    if provider.startswith("fastrnn[triton"):  # the kernel shapes the call really ran
        with _triton_kernels("launch").shapes_used() as used:
            fn()  # warm-up: compilation, autotuning, allocator
        shapes = "+".join(sorted(set(used)))
    else:
        fn()  # warm-up: compilation, autotuning, allocator
    if dry_run:
        t0 = time.perf_counter()
        fn()
        med = q20 = q80 = time.perf_counter() - t0
    elif device.type == "cuda":
        import triton.testing

        med, q20, q80 = (v / 1e3 for v in triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    else:
        m = tb.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
        times = np.asarray(m.times)
        med, q20, q80 = float(np.median(times)), float(np.quantile(times, 0.2)), float(np.quantile(times, 0.8))
    return {
        **cfg.asdict(),
        "provider": provider,
        "median_s": med,
        "p20_s": q20,
        "p80_s": q80,
        "tokens_per_s": cfg.T * cfg.B / med,
        "peak_bytes": None if dry_run else _peak_bytes(fn, device),
        # Triton providers: the kernel shapes the dispatcher ran ("step" under a pinned
        # persistent provider where no persistent grid fits); None for the others
        "kernel_shapes": shapes,
    }


def _triton_kernels(module: str):
    """A module of the kernels fastrnn's triton backend runs."""
    fastrnn.backends._import("fastrnn.kernels")
    return importlib.import_module(f"fastrnn.kernels.{module}")
