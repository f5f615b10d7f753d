"""The one place that picks a kernel shape and launches kernels, for every cell.

``plan`` chooses the shape (sequence / step / persistent, ``_common.kernel_shape``'s rule and
the persistent grid's residency check) and its block sizes and warps; ``run`` runs the
chosen shape's launches in time order; ``launch`` starts one kernel with every argument
passed by name, the plan's block sizes added, and the argument set checked against the
kernel's parameters, so neither an argument order nor a forgotten argument can go wrong
silently; ``launch_persistent`` adds a persistent kernel's barrier state and turns a grid
barrier that gave up into an error. The cell modules only say which tensors each of their
kernels takes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import triton
from triton.runtime.errors import OutOfResources

from . import _common
from ._common import (
    BLOCK_B,
    INT32_ELEMENTS,
    PERSISTENT_WARPS,
    RESIDENT_BYTES,
    carry_dh_step_kernel,
    carry_splits,
    forced_shape_name,
    k_chunks,
    kernel_shape,
    persistent_budget,
    persistent_grid,
    persistent_tile,
    pow2_block,
    resident_bytes,
    time_steps,
    warps_for,
)

STEP_BK = 32  # K-chunk of the step kernels' streamed products (matmul_rows)
# Elements of one (BR, BW) tile of a row kernel (a program holding BR whole rows, for
# statistics over a row: LayerNorm), and threads per element. Compiled for sm_90 (python -m
# fastrnn.kernels.resources), the LayerNorm LSTM row kernels at 4 elements of a tile per
# thread take 102-128 registers without spills (H=64 and H=1024, fp32); at 8 they take
# 187-255 (4 warps), and at H=4096 (16 warps, at most 128 registers) they spill 312-336 B.
ROW_ELEMS = 1024
ROW_ELEMS_PER_THREAD = 4
# Keys of a plan's meta that are launch options of ``kernel[grid](...)``, not kernel
# parameters. launch_cooperative_grid (persistent kernels): the driver launches the grid
# only if all its programs can be resident at once, which grid_barrier needs; the
# interpreter ignores it.
LAUNCH_OPTIONS = ("num_warps", "launch_cooperative_grid")


def row_blocks(N: int) -> dict:
    """Block sizes of a row kernel over rows N wide: BW >= N (the whole row, a power of two)
    and BR rows per program, BR * BW <= ROW_ELEMS where BW allows (one row at least); warps
    for ROW_ELEMS_PER_THREAD elements of a tile per thread, 8 to 16."""
    BW = pow2_block(N, hi=1 << 30)
    BR = max(1, min(BLOCK_B, ROW_ELEMS // BW))
    return dict(BR=BR, BW=BW, num_warps=max(8, min(16, BR * BW // (32 * ROW_ELEMS_PER_THREAD))))


def blocks(shape: str, n_gates: int, H: int, P: int, proj: bool, elem: int = 4, device=None) -> dict | None:
    """Block sizes and launch options of ``shape``'s kernels at hidden H and output width P,
    for ``n_gates`` weight tiles of ``elem`` bytes an element; None where the shape has no
    kernel (persistent with a projection, or no persistent tile fits)."""
    if shape == "sequence":  # one program holds the whole hidden width
        return dict(
            BB=BLOCK_B,
            BH=pow2_block(H, hi=1 << 30),
            BP=pow2_block(P, hi=1 << 30),
            num_warps=warps_for(n_gates, H, P, proj, elem),
        )
    if shape == "step":  # BN: the state-width tile of the shared carry_dh step
        return dict(BB=BLOCK_B, BH=pow2_block(H), BP=pow2_block(P), BN=pow2_block(P), BK=STEP_BK, num_warps=4)
    if shape == "persistent":  # BK: the state row the backwards' carry takes, in KS parts
        BH = None if proj else persistent_tile(H, n_gates, elem, persistent_budget(device))
        if BH is None:
            return None
        KA, KB, KC = k_chunks(H)  # the forwards' product; the backwards' takes BK
        return dict(
            BB=BLOCK_B,
            BH=BH,
            BK=pow2_block(H, hi=1 << 30),
            KA=KA,
            KB=KB,
            KC=KC,
            KS=carry_splits(H, BH),
            num_warps=PERSISTENT_WARPS,
            launch_cooperative_grid=True,
        )
    raise ValueError(f"unknown kernel shape {shape!r}")


@dataclass(frozen=True)
class Plan:
    shape: str  # "sequence" | "step" | "persistent"
    B: int
    H: int
    P: int
    meta: dict  # blocks() of the shape

    def grid(self, width: str | None = None) -> tuple:
        """Sequence: one program per batch block. Persistent: batch blocks x hidden tiles.
        Step: batch blocks x tiles of ``width`` ("H" or "P", the columns the kernel owns).
        Width "rows": a row kernel's programs, BR whole rows each (``row_blocks``)."""
        if width == "rows":
            return (triton.cdiv(self.B, self.meta["BR"]),)
        n_b = triton.cdiv(self.B, BLOCK_B)
        if self.shape == "sequence":
            return (n_b,)
        if self.shape == "persistent":
            return (n_b, triton.cdiv(self.H, self.meta["BH"]))
        if width == "H":
            return (n_b, triton.cdiv(self.H, self.meta["BH"]))
        if width == "P":
            return (n_b, triton.cdiv(self.P, self.meta["BP"]))
        raise ValueError(f"a step kernel's grid needs width 'H' or 'P', got {width!r}")


def plan(
    n_gates: int,
    H: int,
    P: int,
    proj: bool,
    elem: int,
    B: int,
    device: torch.device,
    has_persistent: bool = True,
    row: int = 0,
) -> Plan:
    """The kernel shape for this problem: ``kernel_shape``'s choice, except that step becomes
    persistent where a persistent grid can run, unless forced (FASTRNN_TRITON_KERNEL=step)
    or a persistent grid failed on this device before (``step_fallback``), and a persistent
    request falls back to the step kernels where no persistent grid can run (a cell without
    persistent kernels, a projection, no tile fits, or the grid could not be resident at once)
    and while a CUDA graph is being captured (a barrier that gave up could not be reported).
    ``row``: the widest row of one step the cell's kernels address beyond its gates
    (n_gates*H) and outputs (P), in elements: a workspace row, x_proj's batch stride.
    A layer whose one step (B rows) or weight matrix reaches 2^31 elements is refused."""
    step = B * max(n_gates * H, P, row)
    weights = n_gates * H * P  # W_hh; W_hr (P, H) is smaller
    if step >= INT32_ELEMENTS or weights >= INT32_ELEMENTS:
        raise ValueError(
            f"the triton backend cannot run this layer (batch {B}, hidden {H}, output {P}): "
            f"its kernels address one time step ({step} elements) and each weight matrix ({weights} "
            f"elements) with 32-bit offsets, which reach up to {INT32_ELEMENTS - 1}. Split the batch "
            "into smaller ones, or use backend='reference'."
        )
    shape = kernel_shape(n_gates, H, P, proj, elem)
    if shape == "sequence" and resident_bytes(n_gates, H, P, proj, elem) > RESIDENT_BYTES:
        # only a forced shape gets here. Refused on every device, the interpreter included
        # (which has no shared-memory limit), so the CPU lanes and a dry run of the benchmark
        # see exactly what a GPU run would
        raise ValueError(
            f"FASTRNN_TRITON_KERNEL=sequence cannot run this layer (hidden {H}, output {P}, "
            f"{8 * elem}-bit weights): the sequence kernel keeps all padded weight tiles on chip, "
            f"{resident_bytes(n_gates, H, P, proj, elem) // 1024} KiB here, and fits up to "
            f"{RESIDENT_BYTES // 1024} KiB (compiled for sm_90 its backward stages about twice its tiles "
            "in shared memory, of 227 KiB a block may use). Use FASTRNN_TRITON_KERNEL=step or auto."
        )
    auto = shape == "step" and forced_shape_name() == "auto" and _device_key(device) not in _NO_PERSISTENT
    if auto:
        shape = "persistent"  # the automatic choice, where a persistent grid can run (below)
    if shape == "persistent" and (
        not has_persistent or proj or _capturing(device) or persistent_grid(B, H, n_gates, device, elem) is None
    ):
        shape = "step"
    elif auto:
        _local.auto_persistent_plans += 1
    if _shape_log is not None:
        _shape_log.append(shape)
    return Plan(shape, B, H, P, blocks(shape, n_gates, H, P, proj, elem, device))


class PersistentGridError(RuntimeError):
    """A persistent kernel's grid could not run at once: the driver refused the cooperative
    launch, or a grid barrier gave up. Its outputs are incomplete and never returned."""

    def __init__(self, message: str, device: torch.device):
        super().__init__(message)
        self.device = device


# devices (type, index) where a persistent grid failed under the automatic choice: plan()
# chooses the step kernels there from then on
_NO_PERSISTENT: set = set()


class _ThreadState(threading.local):
    """Per-thread flags: one thread's capture warm-up or preload must not change what
    another thread's calls plan or launch."""

    auto_persistent_plans = 0  # plans that chose persistent automatically, for step_fallback
    load_only = False  # launch() compiles and loads kernels instead of launching them (_preload)
    as_captured = False  # plan() chooses as a CUDA graph capture would (planned_as_captured)


_local = _ThreadState()


def _preload(launcher: Callable, args: tuple, kwargs: dict) -> None:
    """Compile and load the kernels a CUDA graph capture of this call would launch: the
    eager call ran a persistent grid, a capture runs the step kernels, and Triton loads a
    kernel's module on its first launch, which the driver forbids while a stream is being
    captured (torch.compile's "reduce-overhead" and make_graphed_callables warm up eagerly,
    then capture). The launcher runs planned as captured with launch() loading instead of
    launching; its outputs are dropped. A failure here leaves things as they were."""
    old, _local.load_only = _local.load_only, True
    try:
        with planned_as_captured():
            launcher(*args, **kwargs)
    except Exception:
        pass
    finally:
        _local.load_only = old


def _device_key(device: torch.device) -> tuple:
    return (device.type, device.index)


def _signature(args: tuple, kwargs: dict) -> tuple:
    """A call's arguments as a key: tensors by shape, strides, dtype and device, other
    values as they are."""

    def one(a):
        return ("tensor", a.shape, a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor) else ("value", a)

    return tuple(one(a) for a in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))


def step_fallback(launcher: Callable) -> Callable:
    """A launcher whose automatic persistent grid failed (PersistentGridError: another
    process on the GPU, MPS or MIG limits) runs again with the step kernels, which need no
    co-residency, with a RuntimeWarning, and the device keeps the step kernels from then on.
    Forced (FASTRNN_TRITON_KERNEL=persistent) the error propagates. The failed launch's
    outputs are dropped; a launcher allocates its outputs and writes nothing else."""

    preloaded: set = set()  # argument signatures whose capture kernels are loaded (_preload)

    @functools.wraps(launcher)
    def run_with_fallback(*args, **kwargs):
        try:
            before = _local.auto_persistent_plans
            out = launcher(*args, **kwargs)
            cuda = any(isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args)
            if cuda and _local.auto_persistent_plans != before and not _local.load_only:
                key = _signature(args, kwargs)
                if key not in preloaded:
                    preloaded.add(key)
                    _preload(launcher, args, kwargs)
            return out
        except PersistentGridError as e:
            if forced_shape_name() != "auto":
                raise
            _NO_PERSISTENT.add(_device_key(e.device))
            warnings.warn(
                f"{e} The automatic choice ran the step kernels instead and keeps them on {e.device} for this process.",
                RuntimeWarning,
                stacklevel=2,
            )
            return launcher(*args, **kwargs)

    return run_with_fallback


def _capturing(device: torch.device) -> bool:
    if _local.as_captured:
        return True
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def planned_as_captured():
    """Plans made inside choose the shapes a CUDA graph capture would: a capture's warm-up
    (kernels/graphs.py) must launch, and so load, the kernels the capture will launch,
    since Triton loads a kernel's module on its first launch and the driver forbids that
    while a stream is captured."""
    old, _local.as_captured = _local.as_captured, True
    try:
        yield
    finally:
        _local.as_captured = old


# shapes_used() collects here the shape of every plan made inside it
_shape_log = None


@contextlib.contextmanager
def shapes_used():
    """The kernel shapes plan() chose inside the block, one per layer, direction and pass,
    in order: what a call really ran where a forced shape falls back (a forced persistent
    shape runs the step kernels where no persistent grid can)."""
    global _shape_log
    saved, _shape_log = _shape_log, []
    try:
        yield _shape_log
    finally:
        if saved is not None:  # nested: the enclosing block saw these plans too
            saved.extend(_shape_log)
        _shape_log = saved


# kernels/rehearsal.py sets this to a function(kernel, plan, width, args, meta, options) that
# records a launch instead of starting it
_recorder = None


@cache
def _params(kernel) -> tuple[str, ...]:
    return tuple(inspect.signature(kernel.fn).parameters)


def launch(kernel, p: Plan, width: str | None = None, **args) -> None:
    """``kernel[grid](**args)`` with the plan's grid, block sizes and launch options
    (LAUNCH_OPTIONS). ``args`` must name every other parameter of the kernel, and nothing else."""
    params = _params(kernel)
    meta = {k: v for k, v in p.meta.items() if k in params}
    options = {k: v for k, v in p.meta.items() if k in LAUNCH_OPTIONS}
    given = set(args) | set(meta)
    if given != set(params):
        raise TypeError(
            f"{kernel.fn.__name__}: missing {sorted(set(params) - given)}, unknown {sorted(given - set(params))}"
        )
    if _recorder is not None:
        _recorder(kernel, p, width, args, meta, options)
        return
    if _local.load_only:
        compiled = kernel.warmup(**args, **meta, **options, grid=p.grid(width))
        getattr(compiled, "_init_handles", lambda: None)()
        return
    kernel[p.grid(width)](**args, **meta, **options)


def run(
    p: Plan,
    T: int,
    reverse: bool,
    *,
    backward: bool,
    sequence: Callable[[], None],
    step: Callable[[int, int, int], None],
    persistent: Callable[[], None] | None = None,
) -> None:
    """Run the plan's shape: ``sequence()`` or ``persistent()`` once, or ``step(s, t, prev)``
    per time step in processing order (reversed for a backward; ``prev`` is the time index
    of the step before t in the forward order, -1 at the first)."""
    if p.shape == "sequence":
        sequence()
    elif p.shape == "persistent":
        persistent()
    else:
        steps = list(time_steps(T, reverse))
        for s, t, prev in reversed(steps) if backward else steps:
            step(s, t, prev)


def launch_persistent(kernel, p: Plan, **args) -> None:
    """``launch`` of a persistent kernel (a cooperative grid, ``blocks``) with its
    grid_barrier state: zeroed counters, one per batch block, the error flag and the bound
    on a wait (``_common.BARRIER_POLLS``). Raises RuntimeError, and so never hands back the
    partial outputs, when the driver refuses the grid or its barrier gave up."""
    grid, T = p.grid(), args["T"]
    device = next(v.device for v in args.values() if isinstance(v, torch.Tensor))
    polls = _common.BARRIER_POLLS
    state = torch.zeros(grid[0] + 1, device=device, dtype=torch.int32)  # counters, then the flag
    advice = (
        f"the {grid[0]} x {grid[1]} programs of its grid (batch blocks x hidden tiles) must all run at "
        "once, and here they could not (another process on the GPU, MPS or MIG limits, or fewer "
        "SMs free than the device has). Set FASTRNN_TRITON_KERNEL=step to run the step kernels instead."
    )
    if _capturing(device):  # plan() chooses the step kernels while a graph is captured
        raise RuntimeError(f"{kernel.fn.__name__}: a persistent kernel cannot be captured in a CUDA graph")
    try:
        launch(kernel, p, count_ptr=state[:-1], err_ptr=state[-1:], max_polls=polls, **args)
    except OutOfResources as e:  # a block asks for more shared memory or registers than the device has
        raise PersistentGridError(
            f"{kernel.fn.__name__}: the device cannot hold one program ({e}). Set FASTRNN_TRITON_KERNEL=step "
            "to run the step kernels instead.",
            device,
        ) from e
    except RuntimeError as e:  # the driver's refusal ("too many blocks in cooperative launch")
        if "cooperative" in str(e).lower():
            raise PersistentGridError(
                f"{kernel.fn.__name__}: the driver refused the grid {grid}: {advice}", device
            ) from e
        raise
    if _recorder is not None:  # a rehearsal on meta tensors: nothing ran, no flag to read
        return
    # one sync per persistent launch, which already spans the whole sequence: the cost is
    # the host's view of that sync, and the next layer's launches queue after it
    gave_up_at = int(state[-1].item())
    if gave_up_at:
        raise PersistentGridError(
            f"{kernel.fn.__name__}: the grid barrier gave up after {polls} polls at step {gave_up_at - 1} "
            f"of {T} (grid {grid}), so its outputs are incomplete and were discarded: {advice}",
            device,
        )


def carry_dh(p: Plan, dg_t, w_hh, dh, direct, lens, has_lengths: bool, t: int, precision: str) -> None:
    """The step kernels' dh_{t-1} = dgates_t @ W_hh (+ direct), in place on dh (B, P):
    carry_dh_step_kernel, shared by every cell."""
    launch(
        carry_dh_step_kernel,
        p,
        "P",
        dg_ptr=dg_t,
        G=dg_t.shape[-1],
        w_ptr=w_hh,
        direct_ptr=direct if direct is not None else dh,
        dh_ptr=dh,
        len_ptr=lens,
        t=t,
        B=p.B,
        N=p.P,
        HAS_DIRECT=direct is not None,
        HAS_LENGTHS=has_lengths,
        PRECISION=precision,
    )
