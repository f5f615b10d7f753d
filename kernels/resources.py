"""``python -m fastrnn.kernels.resources [H ...]`` (in a source checkout without an install:
``PYTHONPATH=. python -m kernels.resources``): compile every Triton kernel of fastrnn for a
Hopper GPU (sm_90) without one, and print each kernel's registers per thread, stack (spill)
bytes and shared memory.

Triton ships ptxas and cuobjdump, so ``triton.compile`` with a GPUTarget runs on a CPU-only
machine. This catches what the interpreter accepts and the compiler rejects, and shows
spills before any GPU time is spent. Block sizes and warps come from ``launch.blocks``, as
the launchers use them; the flags below pick one specialisation of each kernel. Runtime
arguments are compiled unspecialised (no divisibility marks: loads that cannot be proven
aligned are not vectorised), which can take more registers than a launch, whose binary
``python -m fastrnn.kernels.rehearsal`` compiles with the launch's specialisation.
``time_offsets`` reads a compiled kernel's TTIR for the width of its time-indexed addresses.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import _common, gemm, gru, launch, layernorm_lstm, lstm, peephole_lstm, rnn

TARGET = GPUTarget("cuda", 90, 32)


# arguments that carry the input dtype; every other pointer is an fp32 workspace (or the
# int64 lengths, the int32 barrier counters and error flag)
INPUT_DTYPE_ARGS = {
    "x_ptr",
    "w_ptr",
    "wr_ptr",
    "h0_ptr",
    "hbuf_ptr",  # the persistent forwards exchange h in the weights' dtype
    "c0_ptr",
    "y_ptr",
    "bhn_ptr",
    "dy_ptr",
    "dhn_ptr",
    "dcn_ptr",
    "lnr_w_ptr",
    "lnr_b_ptr",
    "lnc_w_ptr",
    "lnc_b_ptr",
    "bias_ptr",
}
FLOAT_ARGS = {"eps"}  # fp32 scalars; every other non-pointer runtime argument is an int32

# the LSTM kernels' cell, as lstm.forward / lstm.backward pass it by default
LSTM_FWD = dict(CELL=lstm.LSTM_CELL[0], HAS_CELL_PARAMS=False, CP_ROWS=1)
LSTM_BWD = dict(CELL_BACKWARD=lstm.LSTM_CELL[1], HAS_CELL_PARAMS=False, CP_ROWS=1)
# the same kernels with the peephole cell and its (3, H) parameters, padded to 4 rows as
# lstm._cell_args pads them
PEEPHOLE_FWD = dict(CELL=peephole_lstm.PEEPHOLE_CELL[0], HAS_CELL_PARAMS=True, CP_ROWS=4)
PEEPHOLE_BWD = dict(CELL_BACKWARD=peephole_lstm.PEEPHOLE_CELL[1], HAS_CELL_PARAMS=True, CP_ROWS=4)

# (name, kernel, weight tiles, flags) of each shape; block sizes and warps come from
# launch.blocks, the launchers' own source (num_warps in flags: a launcher's own choice)
SEQUENCE = [
    ("lstm_fwd_seq", lstm.lstm_fwd_seq_kernel, 4, dict(REVERSE=False, HAS_PROJ=False, **LSTM_FWD)),
    ("lstm_bwd_seq", lstm.lstm_bwd_seq_kernel, 4, dict(REVERSE=True, HAS_PROJ=False, **LSTM_BWD)),
    ("peephole_fwd_seq", lstm.lstm_fwd_seq_kernel, 4, dict(REVERSE=False, HAS_PROJ=False, **PEEPHOLE_FWD)),
    ("peephole_bwd_seq", lstm.lstm_bwd_seq_kernel, 4, dict(REVERSE=True, HAS_PROJ=False, **PEEPHOLE_BWD)),
    ("gru_fwd_seq", gru.gru_fwd_seq_kernel, 3, dict(REVERSE=False, HAS_BHN=True)),
    ("gru_bwd_seq", gru.gru_bwd_seq_kernel, 3, dict(REVERSE=False)),
    ("rnn_fwd_seq", rnn.rnn_fwd_seq_kernel, 1, dict(REVERSE=False, RELU=False)),
    ("rnn_bwd_seq", rnn.rnn_bwd_seq_kernel, 1, dict(REVERSE=False, RELU=True)),
    (
        "ln_lstm_fwd_seq",
        layernorm_lstm.ln_fwd_seq_kernel,
        4,
        dict(REVERSE=False, HAS_LNR_B=True, HAS_LNC_B=True, num_warps=layernorm_lstm.SEQ_WARPS),
    ),
    ("ln_lstm_bwd_seq", layernorm_lstm.ln_bwd_seq_kernel, 4, dict(REVERSE=True, num_warps=layernorm_lstm.SEQ_WARPS)),
]
STEP = [
    ("lstm_fwd_step", lstm.lstm_fwd_step_kernel, 4, dict(HAS_PROJ=False, **LSTM_FWD)),
    ("lstm_proj_step", lstm.lstm_proj_step_kernel, 4, {}),
    ("lstm_dt_step", lstm.lstm_dt_step_kernel, 4, {}),
    ("lstm_bwd_step", lstm.lstm_bwd_step_kernel, 4, dict(HAS_PROJ=True, CARRY=False, **LSTM_BWD)),
    ("lstm_bwd_step+carry", lstm.lstm_bwd_step_kernel, 4, dict(HAS_PROJ=False, CARRY=True, **LSTM_BWD)),
    ("peephole_fwd_step", lstm.lstm_fwd_step_kernel, 4, dict(HAS_PROJ=False, **PEEPHOLE_FWD)),
    ("peephole_bwd_step", lstm.lstm_bwd_step_kernel, 4, dict(HAS_PROJ=True, CARRY=False, **PEEPHOLE_BWD)),
    ("carry_dh_step", _common.carry_dh_step_kernel, 4, dict(HAS_DIRECT=True)),
    ("gru_fwd_step", gru.gru_fwd_step_kernel, 3, dict(HAS_BHN=True)),
    ("gru_bwd_step", gru.gru_bwd_step_kernel, 3, dict(CARRY=True)),
    ("rnn_fwd_step", rnn.rnn_fwd_step_kernel, 1, dict(RELU=False)),
    ("rnn_bwd_step", rnn.rnn_bwd_step_kernel, 1, dict(RELU=True, CARRY=True)),
    ("ln_lstm_product_step", layernorm_lstm.ln_product_step_kernel, 4, {}),
]
# row kernels (whole rows per program): blocks from launch.row_blocks
ROWS = [
    ("ln_lstm_fwd_row", layernorm_lstm.ln_fwd_row_kernel, 4, dict(HAS_LNR_B=True, HAS_LNC_B=True)),
    ("ln_lstm_bwd_row", layernorm_lstm.ln_bwd_row_kernel, 4, {}),
]
# the layer's GEMMs outside the loop at an LSTM's sizes: the weight gradient dW_hh (4H x H,
# blocks from gemm.blocks) and the input projection with its bias (4H wide,
# gemm.linear_blocks)
GEMM = [("weight_grad", gemm.weight_grad_kernel, 4, {}), ("linear", gemm.linear_kernel, 4, dict(HAS_BIAS=True))]
PERSISTENT = [
    ("lstm_fwd_persistent", lstm.lstm_fwd_persistent_kernel, 4, dict(REVERSE=False, **LSTM_FWD)),
    ("lstm_bwd_persistent", lstm.lstm_bwd_persistent_kernel, 4, dict(REVERSE=False, **LSTM_BWD)),
    ("peephole_fwd_persistent", lstm.lstm_fwd_persistent_kernel, 4, dict(REVERSE=False, **PEEPHOLE_FWD)),
    ("peephole_bwd_persistent", lstm.lstm_bwd_persistent_kernel, 4, dict(REVERSE=False, **PEEPHOLE_BWD)),
    ("gru_fwd_persistent", gru.gru_fwd_persistent_kernel, 3, dict(REVERSE=False, HAS_BHN=True)),
    ("gru_bwd_persistent", gru.gru_bwd_persistent_kernel, 3, dict(REVERSE=False)),
]


def configs(H: int, dtype: str = "fp32") -> list[tuple]:
    """(name, kernel, constexprs, num_warps, dtype) as the launchers would run them at hidden
    H (no projection) for inputs of ``dtype`` ("fp32", "bf16" or "fp16"): the sequence
    kernels where the rule picks them, the step and row kernels, and the persistent kernels
    where a tile fits, and the weight-gradient GEMM; lengths given, TF32 for fp32."""
    elem = 4 if dtype == "fp32" else 2
    prec = "tf32" if dtype == "fp32" else "ieee"
    out = []
    for shape, table in (("sequence", SEQUENCE), ("step", STEP), ("rows", ROWS), ("persistent", PERSISTENT)):
        for name, k, gates, flags in table:
            if shape == "sequence" and _common.kernel_shape(gates, H, H, False, elem) != "sequence":
                continue
            meta = launch.row_blocks(H) if shape == "rows" else launch.blocks(shape, gates, H, H, False, elem)
            if meta is None:
                continue
            consts = {**meta, **flags, "HAS_LENGTHS": True, "PRECISION": prec}
            out.append((f"{name} H={H} {dtype}", k, consts, consts["num_warps"], dtype))
    for name, k, gates, flags in GEMM:
        meta = gemm.blocks(gates * H, H) if k is gemm.weight_grad_kernel else gemm.linear_blocks(gates * H)
        consts = {**meta, **flags, "OPERAND": dtype, "PRECISION": prec}
        out.append((f"{name} H={H} {dtype}", k, consts, consts["num_warps"], dtype))
    return out


def compile_for_hopper(kernel, constexprs: dict, num_warps: int, dtype: str = "fp32"):
    """triton.compile of ``kernel`` for sm_90: the input-dtype pointers as ``dtype``, the
    other pointers fp32 (int64 lengths, int32 barrier counters and error flag), other
    runtime arguments int32 (fp32 for FLOAT_ARGS)."""
    sig = {}
    for name, p in zip(kernel.arg_names, kernel.params, strict=False):
        if p.is_constexpr:
            continue
        if name.endswith("_ptr"):
            sig[name] = {"len_ptr": "*i64", "count_ptr": "*i32", "err_ptr": "*i32"}.get(
                name, f"*{dtype}" if name in INPUT_DTYPE_ARGS else "*fp32"
            )
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return compile_signature(kernel, sig, constexprs, num_warps)


def compile_signature(kernel, signature: dict, constexprs: dict, num_warps: int, hints: dict | None = None):
    """triton.compile of ``kernel`` for sm_90 with the runtime argument types ``signature``
    (name -> "*fp32", "i32", ...) and the constexpr values ``constexprs``. Launch options
    other than num_warps (launch.LAUNCH_OPTIONS: the persistent kernels' cooperative grid)
    come from ``constexprs``, where launch.blocks puts them, and land in the compiled
    metadata, which Triton's launcher reads."""
    sig, const, attrs = {}, {}, {}
    hints = hints or {}
    for i, (name, p) in enumerate(zip(kernel.arg_names, kernel.params, strict=False)):
        if p.is_constexpr:
            sig[name] = "constexpr"
            const[(i,)] = constexprs[name]
        elif hints.get(name) == 1:  # an int argument equal to 1: a constant of the binary
            sig[name] = "constexpr"
            const[(i,)] = 1
        else:
            sig[name] = signature[name]
            if hints.get(name) == "D":  # a multiple of 16 (an int) or 16-byte aligned (a pointer)
                attrs[(i,)] = [["tt.divisibility", 16]]
    options = {k: constexprs[k] for k in launch.LAUNCH_OPTIONS if k in constexprs}
    return triton.compile(
        ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs),
        target=TARGET,
        options={**options, "num_warps": num_warps},
    )


def resources(compiled) -> dict:
    """Registers, stack (spill) bytes and shared memory of a compiled kernel (cuobjdump)."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return {
        "registers": int(m.group(1)) if m else None,
        "stack_bytes": int(m.group(2)) if m else None,
        "shared_bytes": compiled.metadata.shared,
    }


_VALUE = re.compile(r"%[\w.$-]+")
_DEF = re.compile(r"^\s*(%[\w.$-]+(?::\d+)?(?:\s*,\s*%[\w.$-]+(?::\d+)?)*)\s*=\s*([\w.]+)\b(.*)$")
_FOR = re.compile(r"scf\.for\s+(%[\w.$-]+)\s*=")


def _int_bits(ty: str) -> int | None:
    """Width of an integer scalar or tensor type (i32, tensor<16x1xi64>); None for others."""
    m = re.search(r"(?:^|[\sx])i(\d+)>?$", ty.strip())
    return int(m.group(1)) if m else None


def time_offsets(ttir: str) -> list[tuple[str, bool]]:
    """The address offsets (``tt.addptr``) inside a kernel's time loop (the first ``scf.for``
    of its TTIR) that depend on the loop index, each with whether it is formed in 64 bits
    all the way: the offset and every multiplication between the index and it are i64 (a
    product formed in 32 bits and widened afterwards has already wrapped). Offsets that do
    not depend on the index (a step's rows and columns) are not listed.

    A value depends on the index when an operand of the operation that makes it does (for
    operations with regions, an operand of anything inside them); loop-carried integers
    count as the index."""
    lines = [re.sub(r"\s*loc\([^()]*\)\s*$", "", line) for line in ttir.splitlines()]
    start = next(i for i, line in enumerate(lines) if _FOR.search(line))
    tainted = {_FOR.search(lines[start]).group(1)}
    carried = re.search(r"iter_args\((.*?)\)\s*->\s*\((.*?)\)", lines[start])
    if carried:
        for arg, ty in zip(re.findall(r"(%[\w.$-]+)\s*=", carried.group(1)), carried.group(2).split(","), strict=False):
            if "tensor" not in ty and _int_bits(ty) is not None:
                tainted.add(arg)
    made = {}  # value -> (operation, integer width of its type, operands)
    depth, regions, found = 0, [], []
    for line in lines[start + 1 :]:
        depth += line.count("{") - line.count("}")
        if depth < 0:  # the loop's closing brace
            break
        while regions and depth <= regions[-1][0]:  # a region closed: its op's results are known
            _, names, op, uses = regions.pop()
            for n in names:
                made[n] = (op, None, uses)
                if uses & tainted:
                    tainted.add(n)
        d = _DEF.match(line)
        uses = set(_VALUE.findall(d.group(3) if d else line))
        for r in regions:
            r[3].update(uses)
        if not d:
            continue
        names = [n.split(":")[0] for n in re.split(r"\s*,\s*", d.group(1))]
        op, ty = d.group(2), line.rsplit(" : ", 1)[-1].rsplit(",", 1)[-1]
        if line.count("{") > line.count("}"):  # results made by the region's yields
            regions.append((depth - 1, names, op, set(uses)))
            continue
        for n in names:
            made[n] = (op, _int_bits(ty), uses)
            if uses & tainted:
                tainted.add(n)
        if op == "tt.addptr" and (off := _VALUE.findall(d.group(3))[1]) in tainted:
            wide, todo, seen = _int_bits(ty) == 64, [off], set()
            while todo:  # the index-dependent values the offset is made from
                v = todo.pop()
                if v in seen or v not in tainted or v not in made:
                    continue
                seen.add(v)
                vop, vbits, vuses = made[v]
                wide &= vop != "arith.muli" or vbits == 64
                todo.extend(vuses)
            found.append((line.strip(), wide))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastrnn.kernels.resources", description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, metavar="H", help="hidden sizes (default 64 256 512 1024)")
    sizes = ap.parse_args(argv).sizes or [64, 256, 512, 1024]
    print(f"triton {triton.__version__}, target sm_90")
    print(f"{'kernel':<37} {'warps':>5} {'regs':>5} {'stack B':>8} {'shared B':>9}")
    for dtype in ("fp32", "bf16"):
        for H in sizes:
            for name, k, consts, warps, dt in configs(H, dtype):
                try:
                    r = resources(compile_for_hopper(k, consts, warps, dt))
                    print(
                        f"{name:<37} {warps:>5} {r['registers']:>5} {r['stack_bytes']:>8} {r['shared_bytes']:>9}",
                        flush=True,
                    )
                except Exception as e:  # report and go on: one failing kernel is a finding
                    first = str(e).splitlines()[0] if str(e) else ""
                    print(f"{name:<37} FAILED: {type(e).__name__}: {first}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
