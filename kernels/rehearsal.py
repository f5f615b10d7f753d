"""Rehearse a layer's GPU run without a GPU: ``python -m fastrnn.kernels.rehearsal`` (in a
source checkout: ``PYTHONPATH=. python -m kernels.rehearsal``).

A fastrnn layer runs on meta tensors through its real dispatch (module, functional, ops, the
triton backend's launchers, ``launch.plan``) while ``launch.launch`` records each kernel
launch instead of starting it, as if on an sm_90 GPU with ``sms`` multiprocessors (the
persistent grid's residency check reads that count). Every distinct launch is then compiled
for sm_90 with the argument types the launcher really passed (``resources.compile_signature``)
and checked against what would make it fail at launch on such a GPU: shared memory per
block, registers per thread, grid dimensions, and for a persistent kernel, the residency of
its whole grid at one program per multiprocessor, launched as a cooperative grid (so the
driver refuses a grid that cannot be co-resident). A shape the dispatcher refuses (a forced
sequence kernel past its fit) is an outcome too: the refusal's message is kept.

This is what the GPU benchmark suite and the GPU test lane would launch, config by config,
checked before any GPU time is spent (tests/test_triton_compile.py runs the gpu_goals grid).
Each binary is specialised as Triton's launcher would specialise it (``_arg_hint``: integer
arguments equal to 1 become constants; integers divisible by 16 and 16-byte aligned
addresses are marked so), which decides vectorised loads, and with them registers and
spills (the bf16 LSTM's persistent forward at H=512, before its gates were stacked: 255
registers and 48 B of stack compiled without the marks, 255 and 120 B with them). The input
projection is rehearsed as an eager call runs it (``_projection._EagerLinear``: the GEMM
kernels, launched directly); under torch.compile it is the registered op ``fastrnn::linear``,
whose kernels are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import sys
from dataclasses import dataclass, field

import torch

from fastrnn import backends, numerics

from . import resources

# Hopper: 227 KiB of shared memory per block (opt-in maximum), 255 registers per thread,
# 64 Ki registers per multiprocessor, grid y and z at most 65535.
SHARED_LIMIT = 227 * 1024
REGISTER_LIMIT = 255
REGISTERS_PER_SM = 64 * 1024
GRID_YZ_LIMIT = 65535
H100_SMS = 132  # H100 SXM; the PCIe part has 114

_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.bool: "i1",
}


@dataclass(frozen=True)
class Launch:
    """One distinct kernel launch: the kernel, its compile-time constants, the types of its
    runtime arguments, its grid and warps; ``count`` launches of it in the rehearsed run."""

    kernel: object
    constexprs: tuple  # sorted (name, value)
    signature: tuple  # (name, type, hint) of the runtime arguments, in parameter order (_arg_hint)
    grid: tuple
    num_warps: int
    options: tuple = ()  # sorted (name, value) launch options besides num_warps (cooperative grid)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@dataclass
class Rehearsal:
    shapes: list = field(default_factory=list)  # the shape of each plan (layer, direction, pass), in order
    refused: str | None = None  # the dispatcher's refusal, if it refused
    launches: dict = field(default_factory=dict)  # Launch -> count

    @property
    def shape(self) -> str | None:
        """The kernel shape every plan chose ("sequence", "step", "persistent"), "mixed"
        where they differ, None where nothing was planned."""
        kinds = set(self.shapes)
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)


def _arg_type(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _TYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        # as Triton types an int argument: 32 bits while it fits
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"cannot type a kernel argument of {type(v).__name__}")


def _arg_hint(param, v):
    """What Triton's launcher specialises a runtime argument on: 1 for an int equal to 1 (a
    constant of the binary), "D" for an int divisible by 16 or a tensor whose address is
    16-byte aligned (tt.divisibility = 16), "" otherwise; the parameter's do_not_specialize
    and do_not_specialize_on_alignment respected. A meta tensor's address is taken as a
    CUDA allocation's (aligned far past 16 bytes) plus its storage offset."""
    if isinstance(v, (bool, float)):
        return ""
    if isinstance(v, torch.Tensor):
        aligned = (v.storage_offset() * v.element_size()) % 16 == 0
        return "D" if aligned and not param.do_not_specialize_on_alignment else ""
    if param.do_not_specialize:
        return ""
    if v == 1:
        return 1
    return "D" if v % 16 == 0 and not param.do_not_specialize_on_alignment else ""


@contextlib.contextmanager
def _recording(rehearsal: Rehearsal, shape: str, sms: int, tf32: bool):
    """FASTRNN_TRITON_KERNEL=shape; launch.launch records into ``rehearsal``; meta tensors
    run the triton backend; the persistent residency check sees ``sms`` multiprocessors;
    fp32 products on meta tensors take TF32 when ``tf32`` (the meta device has no TF32
    switch of its own)."""

    def record(kernel, p, width, args, meta, options):
        params = tuple(inspect.signature(kernel.fn).parameters)
        consts = {k: v for k, v in {**args, **meta}.items() if kernel.params[params.index(k)].is_constexpr}
        sig = tuple(
            (k, _arg_type(args[k]), _arg_hint(kernel.params[params.index(k)], args[k]))
            for k in params
            if k in args and k not in consts
        )
        opts = tuple(sorted((k, v) for k, v in options.items() if k != "num_warps"))
        key = Launch(kernel, tuple(sorted(consts.items())), sig, p.grid(width), options["num_warps"], opts)
        rehearsal.launches[key] = rehearsal.launches.get(key, 0) + 1

    # the modules the backend runs: run as ``python -m kernels.rehearsal`` in a source
    # checkout, this file's own package is another import of the same files
    backends._import("fastrnn.kernels")
    L, C = importlib.import_module("fastrnn.kernels.launch"), importlib.import_module("fastrnn.kernels._common")
    tf32_allowed = numerics.tf32_allowed

    def meta_tf32(device, dtype):
        return tf32 and dtype == torch.float32 if device.type == "meta" else tf32_allowed(device, dtype)

    saved = (L._recorder, backends._META_BACKEND, C.META_SMS, numerics.tf32_allowed)
    L._recorder, backends._META_BACKEND, C.META_SMS, numerics.tf32_allowed = record, "triton", sms, meta_tf32
    try:
        with C.forced_shape(shape), L.shapes_used() as shapes:
            yield
        rehearsal.shapes = shapes
    finally:
        L._recorder, backends._META_BACKEND, C.META_SMS, numerics.tf32_allowed = saved


def _module(cell: str, I: int, H: int, dtype: torch.dtype, **kw):
    import fastrnn

    cls = {
        "lstm": fastrnn.LSTM,
        "gru": fastrnn.GRU,
        "rnn": fastrnn.RNN,
        "peephole_lstm": fastrnn.PeepholeLSTM,
        "layernorm_lstm": fastrnn.LayerNormLSTM,
    }[cell]
    return cls(I, H, backend="triton", device="meta", dtype=dtype, **kw)


def rehearse(
    cell: str,
    T: int,
    B: int,
    I: int,
    H: int,
    dtype: torch.dtype,
    mode: str,
    shape: str = "auto",
    *,
    sms: int = H100_SMS,
    tf32: bool = True,
    **module_kw,
) -> Rehearsal:
    """The launches of one layer call (``mode`` "fwd": a no_grad forward; "fwdbwd": forward and
    backward) with ``FASTRNN_TRITON_KERNEL=shape``, on meta tensors. ``tf32``: fp32 products
    as a GPU at torch's defaults runs them (the meta device has no TF32 flag of its own)."""
    out = Rehearsal()
    x = torch.empty(T, B, I, device="meta", dtype=dtype, requires_grad=mode == "fwdbwd")
    with _recording(out, shape, sms, tf32):
        m = _module(cell, I, H, dtype, **module_kw)
        try:
            if mode == "fwd":
                with torch.no_grad():
                    m(x)
            else:
                y = m(x)[0]
                y.backward(torch.empty_like(y))
        except ValueError as e:
            if "cannot run this layer" not in str(e):
                raise
            out.refused = str(e)
    return out


_COMPILED: dict = {}


def compiled(lch: Launch) -> dict:
    """resources() of ``lch`` compiled for sm_90 (cached per kernel, constants and types)."""
    key = (lch.kernel, lch.constexprs, lch.signature, lch.num_warps, lch.options)
    if key not in _COMPILED:
        c = resources.compile_signature(
            lch.kernel,
            {k: ty for k, ty, _ in lch.signature},
            {**dict(lch.constexprs), **dict(lch.options)},
            lch.num_warps,
            {k: hint for k, _, hint in lch.signature},
        )
        _COMPILED[key] = {
            **resources.resources(c),
            **{k: getattr(c.metadata, k, None) for k, _ in lch.options},
        }
    return _COMPILED[key]


def problems(lch: Launch, res: dict, sms: int = H100_SMS) -> list[str]:
    """What would make ``lch`` fail at launch on an sm_90 GPU with ``sms`` multiprocessors."""
    out = []
    threads = 32 * lch.num_warps
    if res["shared_bytes"] > SHARED_LIMIT:
        out.append(f"{res['shared_bytes']} B of shared memory, over {SHARED_LIMIT}")
    if res["registers"] is None or res["registers"] > REGISTER_LIMIT:
        out.append(f"registers {res['registers']}")
    if any(g > GRID_YZ_LIMIT for g in lch.grid[1:]) or lch.grid[0] >= 2**31:
        out.append(f"grid {lch.grid} past the grid limits")
    if res["stack_bytes"]:
        out.append(f"{res['stack_bytes']} B of spill stack")
    if "persistent" in lch.name:
        programs = 1
        for g in lch.grid:
            programs *= g
        if programs > sms:
            out.append(f"persistent grid of {programs} programs on {sms} multiprocessors")
        if not res.get("launch_cooperative_grid"):
            out.append("not launched as a cooperative grid (its barrier would need co-residency unchecked)")
        if res["registers"] is not None and res["registers"] * threads > REGISTERS_PER_SM:
            out.append(f"{res['registers']} registers x {threads} threads do not fit one multiprocessor")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastrnn.kernels.rehearsal", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="lstm,gru,rnn,peephole_lstm,layernorm_lstm")  # the suite's defaults
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--shapes", default="auto,step,persistent")
    ap.add_argument("--sms", type=int, default=H100_SMS)
    args = ap.parse_args(argv)
    from bench.configs import gpu_goal_configs

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    failures = 0
    print(f"gpu_goals grid rehearsed for sm_90 with {args.sms} multiprocessors")
    for cfg in gpu_goal_configs(args.cells.split(","), args.modes.split(",")):
        for shape in args.shapes.split(","):
            r = rehearse(cfg.cell, cfg.T, cfg.B, cfg.I, cfg.H, dtypes[cfg.dtype], cfg.mode, shape, sms=args.sms)
            head = f"{cfg.label()} [{shape}]"
            if r.refused:
                print(f"{head}: refused: {r.refused.splitlines()[0][:100]}")
                continue
            for lch, n in r.launches.items():
                res = compiled(lch)
                bad = problems(lch, res, args.sms)
                failures += bool(bad)
                print(
                    f"{head} -> {r.shape}: {lch.name} x{n} grid {lch.grid} warps {lch.num_warps} "
                    f"regs {res['registers']} stack {res['stack_bytes']} B shared {res['shared_bytes']} B"
                    + (f"  FAILS: {'; '.join(bad)}" if bad else ""),
                    flush=True,
                )
    print(f"{failures} launch(es) would fail")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
