"""``python -m bench.cpu_table``: the C++ backend's speed goals, measured against torch.nn.

Each row times torch.nn and fastrnn (cpp) in the same run on the same inputs, with identical
weights (load_state_dict), through torch.utils.benchmark.Timer at the process's thread count
(``--threads``; the Timer alone would run at one thread): after warm-up, the two alternate for
``--rounds`` rounds of one blocked_autorange median each, and the row gives the median of the
per-round ratios t(torch.nn) / t(fastrnn) with their range. Forward is under no_grad.

* layer rows: forward+backward backpropagates a random upstream gradient through the output
  (the parameters require grad, the input does not);
* cell rows: the cell stepped 50 times in a Python loop from a zero state, backward of the sum
  of the last h (it depends on every step, so the backward runs through all 50);
* the client row: the model of pytorch/examples' time_sequence_prediction written here
  (LSTMCell(1, 51), LSTMCell(51, 51), Linear(51, 1), float64), a batch of 97 sine waves
  stepped through 999 steps in a Python loop, forward and backward of the MSE loss of the
  next-value predictions: every h receives a gradient.

The header records what makes tables from different machines comparable: the CPU model, the
thread count, torch's version, the 2-thread scaling of a 2048x2048 float32 torch.mm (time at
1 thread / time at 2 threads, best of a few), the load average before and after, and whether
fastrnn's results (output, final states, every gradient) are bitwise identical at 1 and 2
threads for a 2-layer bidirectional LSTM forward+backward.

Memory rows (a second table): the peak extra RSS of one pass of a 2-layer LSTM at
(100, 64, 512, 512), each measured in a fresh process: build the model and the inputs, run a
tiny pass of a small model of the same class (so that lazily loaded code and thread pools are
counted before, not in, the pass), reset and read the RSS high-water mark, run the pass once,
read the mark again; the row gives the difference. The mark is VmHWM of /proc/self/status
(ru_maxrss where that is missing: Linux carries ru_maxrss over from the parent, see
``_peak_kib``). Goal: fastrnn <= torch.nn.

Limits, per row: ``floor`` is the time of the row's multiply-adds (:func:`row_macs`: the
products any implementation must compute) at the best product rate measured here at the
same thread count (the header's ``gemm_rates``: a 2048^3 torch.mm and, in float32, the same
product through oneDNN), and ``bound`` = t(torch.nn) / floor, the largest speedup over
torch.nn that any implementation could show on this machine: a goal above it cannot be
met here. ``--profile`` adds where fastrnn's time goes, per row (:func:`profile_parts`).

``--rows SUBSTR ...`` keeps the rows whose name contains any of the substrings; ``--quick``
(few rounds, tiny run time, no memory and no big rows) is the form bench/test_cpu_table.py
runs; ``--json PATH`` keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

from .providers import FAST, NN
from .runner import device_name

NN_CELL = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
FAST_CELL = {"lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell, "rnn": fastrnn.RNNCell}
CELL_STEPS = 50
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "layer" | "cell" | "client"
    cell: str
    shape: tuple[int, int, int, int]  # (T, B, input, hidden); T = steps for cells
    mode: str  # "fwd" | "fwdbwd"
    goal: float
    packed: bool = False
    layers: int = 1
    bidirectional: bool = False
    dtype: torch.dtype = torch.float32
    big: bool = False  # left out by --quick


def _layer(cell, shape, mode, goal, **kw):
    T, B, I, H = shape
    what = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    if kw.get("packed"):
        what += " packed"
    if kw.get("layers", 1) > 1 or kw.get("bidirectional"):
        what += f" {kw.get('layers', 1)}-layer" + (" bidir" if kw.get("bidirectional") else "")
    name = f"{what} ({T},{B},{I},{H}) {'fwd' if mode == 'fwd' else 'fwd+bwd'}"
    return Row(name, "layer", cell, shape, mode, goal, **kw)


def _cell(cell, B, I, H, goal):
    name = f"{cell.upper()}Cell x{CELL_STEPS} (B={B},I={I},H={H}) fwd+bwd"
    return Row(name, "cell", cell, (CELL_STEPS, B, I, H), "fwdbwd", goal)


ROWS = [
    _layer("lstm", (100, 1, 32, 64), "fwd", 4.0),
    _layer("lstm", (100, 1, 32, 64), "fwdbwd", 4.0),
    _layer("lstm", (100, 8, 64, 128), "fwdbwd", 2.0),
    _layer("lstm", (100, 32, 256, 256), "fwdbwd", 1.5, big=True),
    _layer("lstm", (100, 64, 512, 512), "fwd", 1.2, big=True),
    _layer("lstm", (100, 64, 512, 512), "fwdbwd", 1.2, big=True),
    _layer("gru", (100, 1, 32, 64), "fwdbwd", 20.0),
    _layer("gru", (100, 32, 256, 256), "fwdbwd", 2.5, big=True),
    _layer("rnn", (100, 8, 64, 128), "fwdbwd", 5.0),
    _layer("lstm", (100, 8, 64, 128), "fwd", 2.5, packed=True),
    _layer("lstm", (100, 8, 64, 128), "fwdbwd", 2.0, layers=2, bidirectional=True),
    _cell("lstm", 1, 64, 64, 1.5),
    _cell("lstm", 8, 256, 256, 1.5),
    _cell("gru", 8, 256, 256, 1.5),
    _cell("rnn", 8, 256, 256, 1.5),
    Row(
        "time_sequence_prediction (97x999 fp64) fwd+bwd",
        "client",
        "lstm",
        (999, 97, 1, 51),
        "fwdbwd",
        1.0,
        dtype=torch.float64,
        big=True,
    ),
]

# (name, mode): a 2-layer LSTM at (T, B, input, hidden)
MEMORY_SHAPE = (100, 64, 512, 512)
MEMORY_ROWS = [
    (f"memory LSTM 2-layer ({','.join(map(str, MEMORY_SHAPE))}) {'fwd no_grad' if m == 'fwd' else 'fwd+bwd'}", m)
    for m in ("fwdbwd", "fwd")
]
# 2-layer bidirectional LSTM configs (B, input, hidden) of the 1-vs-2-thread bitwise check
BITWISE_CONFIGS = [(8, 64, 128), (64, 512, 512)]
BITWISE_T = 20


# ---------------------------------------------------------------------------------------
# Workloads: each returns (torch.nn callable, fastrnn callable), both on the same inputs
# ---------------------------------------------------------------------------------------
def _layer_workloads(row: Row, backend: str):
    T, B, I, H = row.shape
    kw = {"num_layers": row.layers, "bidirectional": row.bidirectional, "dtype": row.dtype}
    ours = FAST[row.cell](I, H, backend=backend, **kw)
    theirs = NN[row.cell](I, H, **kw)
    theirs.load_state_dict(ours.state_dict())
    D = 2 if row.bidirectional else 1
    x = torch.randn(T, B, I, dtype=row.dtype)
    g = torch.randn(T, B, D * H, dtype=row.dtype)
    if row.packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        g = torch.randn(int(lengths.sum()), D * H, dtype=row.dtype)

    def run(m):
        if row.mode == "fwd":

            def f():
                with torch.no_grad():
                    m(x)
        else:

            def f():
                out = m(x)[0]
                (out.data if row.packed else out).backward(g)

        return f

    return run(theirs), run(ours)


def _cell_workloads(row: Row, backend: str):
    T, B, I, H = row.shape
    ours = FAST_CELL[row.cell](I, H, backend=backend, dtype=row.dtype)
    theirs = NN_CELL[row.cell](I, H, dtype=row.dtype)
    theirs.load_state_dict(ours.state_dict())
    xs = torch.randn(T, B, I, dtype=row.dtype).unbind(0)
    is_lstm = row.cell == "lstm"

    def run(m):
        def f():
            state = None
            for x in xs:
                state = m(x, state)
            (state[0] if is_lstm else state).sum().backward()

        return f

    return run(theirs), run(ours)


class SinePredictor(nn.Module):
    """Two stacked LSTM cells and a linear read-out, stepped one value at a time: the model
    of pytorch/examples' time_sequence_prediction, the cell class a parameter."""

    def __init__(self, cell_cls, hidden: int = 51):
        super().__init__()
        self.hidden = hidden
        self.lstm1 = cell_cls(1, hidden)
        self.lstm2 = cell_cls(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, x):
        B = x.size(0)
        h1, c1, h2, c2 = (x.new_zeros(B, self.hidden) for _ in range(4))
        outs = []
        for x_t in x.split(1, dim=1):
            h1, c1 = self.lstm1(x_t, (h1, c1))
            h2, c2 = self.lstm2(h1, (h2, c2))
            outs.append(self.linear(h2))
        return torch.cat(outs, dim=1)


def _client_workloads(row: Row, backend: str):
    T, B, _, H = row.shape
    ours = SinePredictor(lambda i, h: fastrnn.LSTMCell(i, h, backend=backend), H).to(row.dtype)
    theirs = SinePredictor(nn.LSTMCell, H).to(row.dtype)
    theirs.load_state_dict(ours.state_dict())
    # B sine waves of period 2*pi*20 samples at random phases; predict each next value
    phase = torch.randint(-80, 80, (B, 1))
    waves = torch.sin((torch.arange(T + 1) + phase).to(row.dtype) / 20)
    x, target = waves[:, :-1], waves[:, 1:]

    def run(m):
        def f():
            F.mse_loss(m(x), target).backward()

        return f

    return run(theirs), run(ours)


WORKLOADS = {"layer": _layer_workloads, "cell": _cell_workloads, "client": _client_workloads}


def _median(fn, min_run_time, threads, single):
    timer = tb.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    if single:
        # one call is longer than min_run_time: blocked_autorange would spend a second call
        # on sizing its block, which doubled the cost of the big rows
        return timer.timeit(1).median
    return timer.blocked_autorange(min_run_time=min_run_time).median


def measure(row: Row, backend: str, min_run_time: float, rounds: int, threads: int) -> dict:
    torch.manual_seed(0)
    f_nn, f_ours = WORKLOADS[row.kind](row, backend)
    warm = []
    for f in (f_nn, f_ours):  # warm-up
        t0 = time.perf_counter()
        f()
        warm.append(time.perf_counter() - t0)
    single = min(warm) >= min_run_time
    if not single:  # a second warm-up pair where it is cheap
        f_nn()
        f_ours()
    # torch.nn and fastrnn alternate, round after round: this shared 2-core machine drifts
    # by tens of percent within minutes, and a ratio of two neighbouring medians cancels
    # most of that; the table gives the median ratio over the rounds and its range.
    t_nn, t_ours = [], []
    for _ in range(rounds):
        t_nn.append(_median(f_nn, min_run_time, threads, single))
        t_ours.append(_median(f_ours, min_run_time, threads, single))
    ratios = sorted(a / b for a, b in zip(t_nn, t_ours))
    T, B, I, H = row.shape
    return {
        "name": row.name,
        "kind": row.kind,
        "cell": row.cell,
        "T": T,
        "B": B,
        "input": I,
        "hidden": H,
        "layers": row.layers,
        "bidirectional": row.bidirectional,
        "dtype": str(row.dtype).removeprefix("torch."),
        "mode": row.mode,
        "packed": row.packed,
        "goal": row.goal,
        "torch_nn_s": statistics.median(t_nn),
        "fastrnn_s": statistics.median(t_ours),
        "speedup": statistics.median(ratios),
        "speedup_min": ratios[0],
        "speedup_max": ratios[-1],
        "rounds": rounds,
        "one_call_per_round": single,
        "torch_nn_rounds_s": t_nn,
        "fastrnn_rounds_s": t_ours,
    }


# ---------------------------------------------------------------------------------------
# Limits: the arithmetic floor of a row, and where fastrnn's time goes
# ---------------------------------------------------------------------------------------
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def row_macs(row: Row) -> int:
    """The multiply-adds of the products a row's work needs, however it is computed: per
    layer and direction, forward ``T*B*G*(in + H)`` (input projection, recurrence; G the gate
    width), backward ``T*B*G*(H + H + in)`` (the carry dh, dW_hh, dW_ih) plus ``T*B*G*in`` for
    the input gradient where the input needs one (layers above the first; the rows' inputs
    do not). A packed row counts its padded T*B rows. Cells: the same per step; the client:
    its two cells (the second one's input needs a gradient) and the read-out."""
    T, B, I, H = row.shape
    G = GATES[row.cell] * H
    bwd = row.mode == "fwdbwd"

    def part(inp: int, input_grad: bool) -> int:
        return T * B * G * ((inp + H) + ((2 * H + inp + (inp if input_grad else 0)) if bwd else 0))

    if row.kind == "layer":
        D = 2 if row.bidirectional else 1
        return sum(D * part(I if layer == 0 else D * H, layer > 0) for layer in range(row.layers))
    if row.kind == "cell":
        return part(I, False)
    return part(I, False) + part(H, True) + T * B * H * 3  # read-out: forward, dW, dh


def gemm_rates(n: int = 2048, repeats: int = 3) -> dict:
    """The best multiply-add rate of an n x n x n product here, at the process's threads:
    torch.mm in float32 and float64 (torch's BLAS), and float32 through oneDNN
    (mkldnn::_linear_pointwise, the C++ backend's large products) where torch has it."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a64, b64 = a.double(), b.double()
    runs = {"mm_fp32": lambda: torch.mm(a, b), "mm_fp64": lambda: torch.mm(a64, b64)}
    if torch.backends.mkldnn.is_available():
        runs["onednn_fp32"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    out = {}
    for name, f in runs.items():
        f()
        best = min(_timed(f) for _ in range(repeats))
        out[name] = n**3 / best
    return out


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def floor_and_bound(r: dict, row: Row, rates: dict) -> None:
    """Adds to a measured row its multiply-adds, the time they take at the best rate measured
    here for its dtype (``floor_s``: no implementation of the row's arithmetic is faster,
    short of fewer operations), and ``bound`` = t(torch.nn) / floor: the largest speedup over
    torch.nn that any implementation could show on this machine."""
    rate = rates["mm_fp64"] if row.dtype == torch.float64 else max(rates["mm_fp32"], rates.get("onednn_fp32", 0.0))
    r["macs"] = row_macs(row)
    r["floor_s"] = r["macs"] / rate
    r["bound"] = r["torch_nn_s"] / r["floor_s"]
    r["fastrnn_rate_of_best"] = r["floor_s"] / r["fastrnn_s"]


_GEMM_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::matmul",
    "aten::linear",
    "mkldnn::_linear_pointwise",
    "mkldnn::_reorder_linear_weight",
}
PROFILE_PARTS = ("loop", "step_products", "gemms", "other_ops", "host")


def profile_parts(fn, reps: int = 3) -> dict:
    """Where one fastrnn call's time goes, as fractions of its wall time under torch.profiler
    (which adds a little per op, most at the smallest sizes):

    * ``loop``: inside the C++ time loops and one-call paths (csrc/, scopes ``fastrnn::*``),
      but not in an ATen call they make: the cell math and the small products of the
      register-blocked kernel;
    * ``step_products``: the products those loops hand to ATen (the large step products on
      oneDNN or BLAS, and adding them in);
    * ``gemms``: products outside the loops (input projection, input and weight gradients);
    * ``other_ops``: every other ATen call (copies, sums, allocation, concatenation);
    * ``host``: the rest of the wall time: Python, autograd's engine, dispatch.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        wall = (time.perf_counter() - t0) * 1e6  # us, as the events
    parts = dict.fromkeys(PROFILE_PARTS, 0.0)
    for e in prof.events():
        name = e.name
        if not name.startswith(("aten::", "mkldnn::", "fastrnn::")):
            continue  # Python-level records (autograd nodes, Functions): host time
        in_loop, p = False, e.cpu_parent
        while p is not None:
            if p.name.startswith("fastrnn::") and "_recurrence" not in p.name:
                in_loop = True
                break
            p = p.cpu_parent
        if name.startswith("fastrnn::") and "_recurrence" not in name:
            part = "loop"
        elif name in _GEMM_OPS or (in_loop and name == "aten::add_"):
            part = "step_products" if in_loop else "gemms"
        elif name.startswith("fastrnn::"):  # a registered op's own dispatch (traced calls)
            part = "host"
        else:
            part = "other_ops"
        parts[part] += e.self_cpu_time_total
    parts["host"] += max(0.0, wall - sum(parts.values()))
    return {k: v / wall for k, v in parts.items()}


# ---------------------------------------------------------------------------------------
# Header: machine facts
# ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (bench.runner reads it for every results file)."""
    return device_name(torch.device("cpu"))


def sgemm_scaling(n: int = 2048, repeats: int = 3) -> dict:
    """Best time of an n x n float32 torch.mm at 1 and at 2 threads: a ratio near 2 says two
    cores of its own, near 1 a shared or hyper-threaded pair."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    prev = torch.get_num_threads()
    best = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.mm(a, b)
            best[threads] = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    finally:
        torch.set_num_threads(prev)
    return {
        "sgemm_n": n,
        "sgemm_1thread_s": best[1],
        "sgemm_2thread_s": best[2],
        "sgemm_2thread_scaling": best[1] / best[2],
    }


def _lstm_results(B, I, H, T, backend, threads):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        m = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, backend=backend)
        x = torch.randn(T, B, I, requires_grad=True)
        h0, c0 = (torch.randn(4, B, H, requires_grad=True) for _ in range(2))
        out, (h_n, c_n) = m(x, (h0, c0))
        upstream = [torch.randn_like(t) for t in (out, h_n, c_n)]
        torch.autograd.backward([out, h_n, c_n], upstream)
        return [out, h_n, c_n, x.grad, h0.grad, c0.grad, *(p.grad for p in m.parameters())]
    finally:
        torch.set_num_threads(prev)


def thread_bitwise(backend: str, configs=BITWISE_CONFIGS, T: int = BITWISE_T) -> list[dict]:
    """Whether fastrnn's output, final states and every gradient of a 2-layer bidirectional
    LSTM are bitwise identical at 1 and at 2 threads, per (B, input, hidden)."""
    res = []
    for B, I, H in configs:
        one = _lstm_results(B, I, H, T, backend, 1)
        two = _lstm_results(B, I, H, T, backend, 2)
        res.append(
            {
                "layers": 2,
                "bidirectional": True,
                "T": T,
                "B": B,
                "input": I,
                "hidden": H,
                "bitwise_equal": all(torch.equal(a, b) for a, b in zip(one, two)),
            }
        )
    return res


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# ---------------------------------------------------------------------------------------
# Memory: one fresh process per measurement
# ---------------------------------------------------------------------------------------
def _memory_child(impl: str, mode: str, shape, backend: str, threads: int) -> dict:
    """Runs in a fresh process: the RSS high-water mark (KiB) before and after one pass."""
    torch.set_num_threads(threads)
    T, B, I, H = shape

    def make(i, h):
        if impl == "torch.nn":
            return nn.LSTM(i, h, num_layers=2)
        return fastrnn.LSTM(i, h, num_layers=2, backend=backend)

    def one_pass(m, x, g):
        if mode == "fwd":
            with torch.no_grad():
                m(x)
        else:
            m(x)[0].backward(g)

    torch.manual_seed(0)
    tiny = make(4, 4)
    one_pass(tiny, torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    m = make(I, H)
    x = torch.randn(T, B, I)
    g = torch.randn(T, B, H) if mode == "fwdbwd" else None
    reset = _reset_peak()
    before, source = _peak_kib()
    current = _rss_kib()
    one_pass(m, x, g)
    after, _ = _peak_kib()
    return {
        "maxrss_before_kib": before,
        "maxrss_after_kib": after,
        "rss_before_kib": current,
        "peak_source": source,
        "peak_reset": reset,
    }


def _peak_kib():
    """The process's RSS high-water mark in KiB and where it came from. Linux carries
    ru_maxrss across fork and exec: a child of this 1.4 GB table process started at 1.4 GB
    and every pass measured 0 MB. VmHWM belongs to the process image, so it starts afresh."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _reset_peak() -> bool:
    """Sets VmHWM to the current RSS (Linux >= 4.0), so that peaks of the imports and of the
    model's construction do not hide part of the pass under the mark."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib():
    """The resident set now (Linux), or None: when it sits well below the high-water mark
    before the pass, the pass's extra memory can hide under that mark."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError):
        return None


def memory_peak(impl: str, mode: str, shape=MEMORY_SHAPE, backend: str = "cpp", threads: int | None = None) -> dict:
    threads = threads or torch.get_num_threads()
    code = (
        "import json, bench.cpu_table as c; "
        f"print(json.dumps(c._memory_child({impl!r}, {mode!r}, {tuple(shape)!r}, {backend!r}, {threads})))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {impl} {mode} failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["extra_mb"] = (r["maxrss_after_kib"] - r["maxrss_before_kib"]) / 1024
    return r


def memory_row(name: str, mode: str, shape=MEMORY_SHAPE, backend: str = "cpp", threads: int | None = None) -> dict:
    nn_r = memory_peak("torch.nn", mode, shape, backend, threads)
    ours = memory_peak("fastrnn", mode, shape, backend, threads)
    T, B, I, H = shape
    return {
        "name": name,
        "cell": "lstm",
        "layers": 2,
        "T": T,
        "B": B,
        "input": I,
        "hidden": H,
        "mode": mode,
        "torch_nn_mb": nn_r["extra_mb"],
        "fastrnn_mb": ours["extra_mb"],
        "ok": ours["extra_mb"] <= nn_r["extra_mb"],
        "torch_nn_maxrss_kib": [nn_r["maxrss_before_kib"], nn_r["maxrss_after_kib"]],
        "fastrnn_maxrss_kib": [ours["maxrss_before_kib"], ours["maxrss_after_kib"]],
        "torch_nn_rss_before_kib": nn_r["rss_before_kib"],
        "fastrnn_rss_before_kib": ours["rss_before_kib"],
        "peak_source": ours["peak_source"],
        "peak_reset": ours["peak_reset"],
    }


# ---------------------------------------------------------------------------------------
def _selected(name: str, filters) -> bool:
    return not filters or any(f.lower() in name.lower() for f in filters)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.cpu_table")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per median (default 0.3, --quick 0.01)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7, --quick 2)")
    p.add_argument("--threads", type=int, default=None, help="threads for the timings (default: torch's count)")
    p.add_argument("--rows", nargs="+", default=None, metavar="SUBSTR", help="rows whose name contains any")
    p.add_argument("--quick", action="store_true", help="few rounds, tiny run time, no memory and no big rows")
    p.add_argument("--profile", action="store_true", help="also where fastrnn's time goes, per row (torch.profiler)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 7)
    min_run_time = a.min_run_time if a.min_run_time is not None else (0.01 if a.quick else 0.3)
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    started = time.perf_counter()
    cpu = cpu_model()
    header = {
        "device": cpu,
        "cpu_model": cpu,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backend": a.backend,
        "commit": commit,
        "rounds": rounds,
        "min_run_time_s": min_run_time,
        "quick": a.quick,
        "rows_filter": a.rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_before": _loadavg(),
    }
    # --quick: a smaller GEMM and only the small bitwise config, a few seconds in all
    header.update(sgemm_scaling(1024 if a.quick else 2048))
    header["thread_bitwise"] = thread_bitwise(a.backend, BITWISE_CONFIGS[:1] if a.quick else BITWISE_CONFIGS)
    rates = header["gemm_rates"] = gemm_rates(1024 if a.quick else 2048)
    print(f"CPU {cpu}; torch {header['torch']}, {threads} threads, fastrnn backend {a.backend}")
    print(
        f"sgemm {header['sgemm_n']}^2 fp32: {header['sgemm_1thread_s'] * 1e3:.1f} ms at 1 thread, "
        f"{header['sgemm_2thread_s'] * 1e3:.1f} ms at 2: 2-thread scaling {header['sgemm_2thread_scaling']:.2f}x"
    )
    bits = ", ".join(
        f"(B={c['B']},H={c['hidden']}) {'yes' if c['bitwise_equal'] else 'NO'}" for c in header["thread_bitwise"]
    )
    print(f"fastrnn 2-layer bidir LSTM fwd+bwd (T={BITWISE_T}) bitwise equal at 1 and 2 threads: {bits}")
    print(
        f"best {header['sgemm_n']}^3 product at {threads} threads, G multiply-adds/s: "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in rates.items())
    )
    la = header["loadavg_before"]
    if la:
        print(f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    if threads > 1 and header["sgemm_2thread_scaling"] < 1.5:
        # measured: with the second core taken by another process, torch.nn's small LSTM
        # forward at 2 threads went from ~8 ms to ~800 ms (OpenMP waits for a descheduled
        # thread), and the per-round ratios spread over two orders of magnitude
        print(
            f"WARNING: the second core is busy (sgemm 2-thread scaling < 1.5): {threads}-thread timings are unreliable"
        )
    # floor: the row's multiply-adds at the best product rate above; bound: t(torch.nn) / floor,
    # the most any implementation could gain over torch.nn here
    print(
        f"{'case':<48} {'torch.nn ms':>12} {'fastrnn ms':>11} {'speedup':>8} {'(range)':>13} {'goal':>6}"
        f"      {'floor ms':>9} {'bound':>7}"
    )
    rows, selected = [], []
    for row in ROWS:
        if (a.quick and row.big) or not _selected(row.name, a.rows):
            continue
        r = measure(row, a.backend, min_run_time, rounds, threads)
        floor_and_bound(r, row, rates)
        rows.append(r)
        selected.append(row)
        ok = "ok" if r["speedup"] >= r["goal"] else "MISS"
        print(
            f"{r['name']:<48} {r['torch_nn_s'] * 1e3:>12.3f} {r['fastrnn_s'] * 1e3:>11.3f} "
            f"{r['speedup']:>7.2f}x  ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}x) {r['goal']:>5.1f}x {ok:<4} "
            f"{r['floor_s'] * 1e3:>9.3f} {r['bound']:>6.2f}x",
            flush=True,
        )
    if a.profile and rows:
        print(f"\n{'where fastrnn spends a call (torch.profiler)':<48} " + " ".join(f"{k:>13}" for k in PROFILE_PARTS))
        for row, r in zip(selected, rows):
            torch.manual_seed(0)
            _, f_ours = WORKLOADS[row.kind](row, a.backend)
            r["profile"] = profile_parts(f_ours, reps=1 if r["one_call_per_round"] else 3)
            print(f"{r['name']:<48} " + " ".join(f"{r['profile'][k]:>12.0%} " for k in PROFILE_PARTS), flush=True)
    memory = []
    if not a.quick:
        for name, mode in MEMORY_ROWS:
            if not _selected(name, a.rows):
                continue
            if not memory:
                print(f"\n{'peak extra RSS of one pass':<48} {'torch.nn MB':>12} {'fastrnn MB':>11}   goal")
            r = memory_row(name, mode, backend=a.backend, threads=threads)
            memory.append(r)
            print(
                f"{r['name']:<48} {r['torch_nn_mb']:>12.1f} {r['fastrnn_mb']:>11.1f}   "
                f"<= torch.nn {'ok' if r['ok'] else 'MISS'}",
                flush=True,
            )
    header["loadavg_after"] = _loadavg()
    header["wall_s"] = time.perf_counter() - started
    la = header["loadavg_after"]
    print(
        f"\n{len(rows)} rows, {len(memory)} memory rows in {header['wall_s']:.0f} s"
        + (f"; load average after {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}" if la else "")
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "rows": rows, "memory": memory}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
