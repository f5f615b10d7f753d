"""``python -m fastrnn.kernels.resources [H ...]`` (in a source checkout without an install:
``PYTHONPATH=. python -m kernels.resources``): compile every Triton kernel of fastrnn for a
Hopper GPU (sm_90) without one, and print each kernel's registers per thread, stack (spill)
bytes and shared memory.

Triton ships ptxas and cuobjdump, so ``triton.compile`` with a GPUTarget runs on a CPU-only
machine. This catches what the interpreter accepts and the compiler rejects, and shows
spills before any GPU time is spent. Block sizes and warps come from ``launch.blocks``, as
the launchers use them; the flags below pick one specialisation of each kernel.
"""

from __future__ import annotations

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
# int64 lengths, the int32 barrier counters)
INPUT_DTYPE_ARGS = {
    "x_ptr",
    "w_ptr",
    "wr_ptr",
    "h0_ptr",
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
    ("lstm_bwd_step", lstm.lstm_bwd_step_kernel, 4, dict(HAS_PROJ=True, **LSTM_BWD)),
    ("peephole_fwd_step", lstm.lstm_fwd_step_kernel, 4, dict(HAS_PROJ=False, **PEEPHOLE_FWD)),
    ("peephole_bwd_step", lstm.lstm_bwd_step_kernel, 4, dict(HAS_PROJ=True, **PEEPHOLE_BWD)),
    ("carry_dh_step", _common.carry_dh_step_kernel, 4, dict(HAS_DIRECT=True)),
    ("gru_fwd_step", gru.gru_fwd_step_kernel, 3, dict(HAS_BHN=True)),
    ("gru_bwd_step", gru.gru_bwd_step_kernel, 3, {}),
    ("rnn_fwd_step", rnn.rnn_fwd_step_kernel, 1, dict(RELU=False)),
    ("rnn_bwd_step", rnn.rnn_bwd_step_kernel, 1, dict(RELU=True)),
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
    other pointers fp32 (int64 lengths, int32 barrier counters), other runtime arguments
    int32 (fp32 for FLOAT_ARGS)."""
    sig, const = {}, {}
    for i, (name, p) in enumerate(zip(kernel.arg_names, kernel.params, strict=False)):
        if p.is_constexpr:
            sig[name] = "constexpr"
            const[(i,)] = constexprs[name]
        elif name.endswith("_ptr"):
            sig[name] = {"len_ptr": "*i64", "count_ptr": "*i32"}.get(
                name, f"*{dtype}" if name in INPUT_DTYPE_ARGS else "*fp32"
            )
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return triton.compile(
        ASTSource(fn=kernel, signature=sig, constexprs=const), target=TARGET, options={"num_warps": num_warps}
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


def main(argv=None) -> int:
    sizes = [int(v) for v in (sys.argv[1:] if argv is None else argv)] or [64, 256, 512, 1024]
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
