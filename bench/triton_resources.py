"""``python -m bench.triton_resources [H ...]``: compile every Triton kernel of fastrnn for a
Hopper GPU (sm_90) without one, and print each kernel's registers per thread, stack (spill)
bytes and shared memory.

Triton ships ptxas and cuobjdump, so ``triton.compile`` with a GPUTarget runs on a CPU-only
machine. This catches what the interpreter accepts and the compiler rejects, and shows
spills before any GPU time is spent. The kernel configurations below mirror the launchers
in kernels/ (block sizes, flags, warps) for a given hidden size.
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

TARGET = GPUTarget("cuda", 90, 32)


def _kernels():
    import fastrnn

    fastrnn.backends._import("fastrnn.kernels")
    m = sys.modules
    return m["fastrnn.kernels.lstm"], m["fastrnn.kernels.gru"], m["fastrnn.kernels.rnn"], m["fastrnn.kernels._common"]


# arguments that carry the input dtype; every other pointer is an fp32 workspace (or the
# int64 lengths, the int32 barrier counters)
INPUT_DTYPE_ARGS = {"x_ptr", "w_ptr", "wr_ptr", "h0_ptr", "c0_ptr", "y_ptr", "bhn_ptr", "dy_ptr", "dhn_ptr", "dcn_ptr"}


def configs(H: int, dtype: str = "fp32") -> list[tuple]:
    """(name, kernel, constexprs, num_warps, dtype) as the launchers would run them at hidden
    H for inputs of ``dtype`` ("fp32", "bf16" or "fp16"; batch blocks of 16, lengths given,
    TF32 for fp32)."""
    L, G, R, C = _kernels()
    BLOCK_B, RESIDENT_BYTES, pow2_block = C.BLOCK_B, C.RESIDENT_BYTES, C.pow2_block
    BH, full = pow2_block(H), pow2_block(H, hi=1 << 30)
    elem = 4 if dtype == "fp32" else 2
    prec = "tf32" if dtype == "fp32" else "ieee"
    common = dict(HAS_LENGTHS=True, BB=BLOCK_B)
    out = []
    # sequence kernels where the rule picks them; warps as warps_for() gives
    for name, k, gates, extra in [
        ("lstm_fwd_seq", L.lstm_fwd_seq_kernel, 4, dict(REVERSE=False, HAS_PROJ=False, BH=full, BP=full)),
        ("lstm_bwd_seq", L.lstm_bwd_seq_kernel, 4, dict(REVERSE=True, HAS_PROJ=False, BH=full, BP=full)),
        ("gru_fwd_seq", G.gru_fwd_seq_kernel, 3, dict(REVERSE=False, HAS_BHN=True, BH=full)),
        ("gru_bwd_seq", G.gru_bwd_seq_kernel, 3, dict(REVERSE=False, BH=full)),
        ("rnn_fwd_seq", R.rnn_fwd_seq_kernel, 1, dict(REVERSE=False, RELU=False, BH=full)),
        ("rnn_bwd_seq", R.rnn_bwd_seq_kernel, 1, dict(REVERSE=False, RELU=True, BH=full)),
    ]:
        if C.kernel_shape(gates, H, H, False, elem) == "sequence":
            out.append((f"{name} H={H}", k, {**common, **extra, "PRECISION": prec},
                        C.warps_for(gates, H, H, False, elem)))
    step = dict(BK=32, PRECISION=prec)
    out += [
        (f"lstm_fwd_step H={H}", L.lstm_fwd_step_kernel, {**common, "HAS_PROJ": False, "BH": BH, **step}, 4),
        (f"lstm_proj_step H={H}", L.lstm_proj_step_kernel, {**common, "BP": BH, **step}, 4),
        (f"lstm_dt_step H={H}", L.lstm_dt_step_kernel, {**common, "BP": BH}, 4),
        (f"lstm_bwd_step H={H}", L.lstm_bwd_step_kernel, {**common, "HAS_PROJ": True, "BH": BH, **step}, 4),
        (f"carry_dh_step H={H}", C.carry_dh_step_kernel, {**common, "HAS_DIRECT": True, "BN": BH, **step}, 4),
        (f"gru_fwd_step H={H}", G.gru_fwd_step_kernel, {**common, "HAS_BHN": True, "BH": BH, **step}, 4),
        (f"gru_bwd_step H={H}", G.gru_bwd_step_kernel, {**common, "BH": BH}, 4),
        (f"rnn_fwd_step H={H}", R.rnn_fwd_step_kernel, {**common, "RELU": False, "BH": BH, **step}, 4),
        (f"rnn_bwd_step H={H}", R.rnn_bwd_step_kernel, {**common, "RELU": True, "BH": BH}, 4),
    ]
    for name, k, gates, extra in [("lstm_fwd_persistent", L.lstm_fwd_persistent_kernel, 4, {}),
                                  ("lstm_bwd_persistent", L.lstm_bwd_persistent_kernel, 4, {}),
                                  ("gru_fwd_persistent", G.gru_fwd_persistent_kernel, 3, {"HAS_BHN": True}),
                                  ("gru_bwd_persistent", G.gru_bwd_persistent_kernel, 3, {})]:
        BHp = C.persistent_tile(H, gates, elem)
        if BHp is not None:  # where the launcher would run it
            out.append((f"{name} H={H}", k, {**common, **extra, "REVERSE": False, "BH": BHp, "BK": full,
                                              "PRECISION": prec}, C.PERSISTENT_WARPS))
    return [(f"{name} {dtype}", k, consts, warps, dtype) for name, k, consts, warps in out]


def compile_for_hopper(kernel, constexprs: dict, num_warps: int, dtype: str = "fp32"):
    """triton.compile of ``kernel`` for sm_90: the input-dtype pointers as ``dtype``, the
    other pointers fp32 (int64 lengths, int32 barrier counters), other runtime arguments
    int32."""
    sig, const = {}, {}
    for i, (name, p) in enumerate(zip(kernel.arg_names, kernel.params)):
        if p.is_constexpr:
            sig[name] = "constexpr"
            const[(i,)] = constexprs[name]
        elif name.endswith("_ptr"):
            sig[name] = {"len_ptr": "*i64", "count_ptr": "*i32"}.get(
                name, f"*{dtype}" if name in INPUT_DTYPE_ARGS else "*fp32")
        else:
            sig[name] = "i32"
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const), target=TARGET,
                          options={"num_warps": num_warps})


def resources(compiled) -> dict:
    """Registers, stack (spill) bytes and shared memory of a compiled kernel (cuobjdump)."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return {"registers": int(m.group(1)) if m else None, "stack_bytes": int(m.group(2)) if m else None,
            "shared_bytes": compiled.metadata.shared}


def main(argv=None) -> int:
    sizes = [int(v) for v in (sys.argv[1:] if argv is None else argv)] or [64, 256, 512, 1024]
    print(f"triton {triton.__version__}, target sm_90")
    print(f"{'kernel':<33} {'warps':>5} {'regs':>5} {'stack B':>8} {'shared B':>9}")
    for dtype in ("fp32", "bf16"):
        for H in sizes:
            for name, k, consts, warps, dt in configs(H, dtype):
                try:
                    r = resources(compile_for_hopper(k, consts, warps, dt))
                    print(f"{name:<33} {warps:>5} {r['registers']:>5} {r['stack_bytes']:>8} "
                          f"{r['shared_bytes']:>9}", flush=True)
                except Exception as e:  # report and go on: one failing kernel is a finding
                    first = str(e).splitlines()[0] if str(e) else ""
                    print(f"{name:<33} FAILED: {type(e).__name__}: {first}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
