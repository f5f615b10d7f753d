"""Every Triton kernel compiles for a Hopper GPU (sm_90), on a machine without one.

The interpreter lane checks the numbers but accepts code the compiler rejects; this lane
runs Triton's real compiler (with its bundled ptxas) on each kernel at the block sizes the
launchers use for hidden 64 and 256, for fp32 and bf16 inputs (the LSTM kernels also with
the PeepholeLSTM's cell, as resources.configs lists them). It runs without TRITON_INTERPRET
(the kernels must be JIT functions, not interpreted ones) and is skipped on a CUDA machine,
where the GPU lane compiles and runs them."""

import os
import re

import pytest
import torch

from conftest import BACKEND

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

pytestmark = [
    pytest.mark.skipif(BACKEND != "triton", reason="runs in the triton compile lane (tests/run.sh)"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU lane compiles the kernels for the real device"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") == "1", reason="needs compiled, not interpreted, kernels"
    ),
]


try:  # ahead-of-time compilation needs a Triton with GPUTarget and ASTSource
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401
except ImportError as e:
    pytest.skip(f"cannot compile ahead of time with this triton: {e}", allow_module_level=True)


def _resources():
    """fastrnn.kernels.resources, from an installed fastrnn or the source tree's kernels/."""
    import fastrnn

    fastrnn.backends._import("fastrnn.kernels")
    from fastrnn.kernels import resources

    return resources


CASES = [c for dtype in ("fp32", "bf16") for H in (64, 256) for c in _resources().configs(H, dtype)]


@pytest.mark.parametrize("name,kernel,constexprs,warps,dtype", CASES, ids=[c[0].replace(" ", "-") for c in CASES])
def test_compiles_for_sm90(name, kernel, constexprs, warps, dtype):
    res = _resources()
    r = res.resources(res.compile_for_hopper(kernel, constexprs, warps, dtype))
    assert r["registers"] is not None and r["shared_bytes"] <= 227 * 1024, r


# the LSTM kernels that take a cell (the peephole rows are the same kernels with another one)
CELL_CASES = [
    c
    for c in _resources().configs(64, "fp32")
    if c[0].startswith("lstm_") and ("CELL" in c[2] or "CELL_BACKWARD" in c[2])
]


@pytest.mark.parametrize(
    "name,kernel,constexprs,warps,dtype", CELL_CASES, ids=[c[0].replace(" ", "-") for c in CELL_CASES]
)
def test_lstm_kernels_compile_with_another_cell(name, kernel, constexprs, warps, dtype):
    """The LSTM kernels compile for sm_90 with another LSTM-shaped cell passed as a
    constexpr, one with per-unit parameters (tests/test_triton.py's _shifted_cell)."""
    from test_triton import _shifted_cell, _shifted_cell_backward

    res = _resources()
    cell = {"CELL": _shifted_cell} if "CELL" in constexprs else {"CELL_BACKWARD": _shifted_cell_backward}
    r = res.resources(
        res.compile_for_hopper(kernel, {**constexprs, **cell, "HAS_CELL_PARAMS": True, "CP_ROWS": 4}, warps, dtype)
    )
    assert r["registers"] is not None and r["shared_bytes"] <= 227 * 1024, r
    print(name, r)


# LayerNorm LSTM kernels beyond CASES: a small sequence kernel (H=32, where the LSTM's warp
# rule spilled) and the row kernels at H=1024 (one row a program), without the LN shifts
# and in the other direction
LN_CASES = [
    c
    for H in (32, 1024)
    for dtype in ("fp32", "bf16")
    for c in _resources().configs(H, dtype)
    if c[0].startswith("ln_lstm_") and (("seq" in c[0]) == (H == 32)) and "product" not in c[0]
]


@pytest.mark.parametrize("name,kernel,constexprs,warps,dtype", LN_CASES, ids=[c[0].replace(" ", "-") for c in LN_CASES])
def test_layernorm_lstm_kernels_compile_without_shifts(name, kernel, constexprs, warps, dtype):
    res = _resources()
    flip = {k: not v for k, v in constexprs.items() if k in ("REVERSE", "HAS_LNR_B", "HAS_LNC_B")}
    r = res.resources(res.compile_for_hopper(kernel, {**constexprs, **flip}, warps, dtype))
    assert r["registers"] is not None and r["shared_bytes"] <= 227 * 1024, r
    print(name, flip, r)


# The kernels that run a whole sequence in one launch (sequence and persistent shapes), in
# both directions for fp32 and as the launchers' default for bf16 (the same compilations as
# CASES, so the compile cache has them)
TIME_LOOP_CASES = [
    (f"{name} reverse={not c['REVERSE']}" if flip else name, kernel, {**c, "REVERSE": c["REVERSE"] != flip}, warps, dt)
    for dtype in ("fp32", "bf16")
    for name, kernel, c, warps, dt in _resources().configs(64, dtype)
    if "REVERSE" in c
    for flip in ((False, True) if dtype == "fp32" else (False,))
]


@pytest.mark.parametrize(
    "name,kernel,constexprs,warps,dtype", TIME_LOOP_CASES, ids=[c[0].replace(" ", "-") for c in TIME_LOOP_CASES]
)
def test_time_offsets_are_64_bit(name, kernel, constexprs, warps, dtype):
    """Step t of a (T, B, G) tensor starts at t*B*G elements, past 2^31 within a GPU's memory
    (T=1024, B=128, G=4*4096 is 2^31), and Triton types the loop counter and integer
    arguments below 2^31 (T, B, H, strides) as int32, where the product wraps. In the
    compiled kernel every address offset inside the time loop that depends on the loop
    index must be int64, and so must every multiplication from the index to it."""
    res = _resources()
    found = res.time_offsets(res.compile_for_hopper(kernel, constexprs, warps, dtype).asm["ttir"])
    assert found, "no time-indexed address in the loop: the TTIR's form changed and time_offsets sees nothing"
    narrow = [line for line, wide in found if not wide]
    if name.startswith("ln_lstm_"):
        # the LayerNorm LSTM's sequence kernels keep int32 offsets into the (T, B, *) tensors
        # the layer allocates (int64 made them spill): layernorm_lstm._plan runs the step
        # kernels past 2^31 elements (tests/test_triton_layernorm.py). x_proj is the caller's.
        narrow = [line for line in narrow if not re.search(r"tt\.addptr %(ws|cs|y|dy|dx|dcout)_ptr, ", line)]
    assert not narrow, f"{len(narrow)} of {len(found)} time offsets are formed in 32 bits:\n" + "\n".join(narrow)


@triton.jit
def _offsets_kernel(x_ptr, y_ptr, T, B, WIDEN: tl.constexpr):
    for t in range(T):
        if WIDEN == 0:  # a 32-bit product
            off = t * B
        elif WIDEN == 1:  # the 32-bit product, widened after it wrapped
            off = (t * B).to(tl.int64)
        else:  # the index widened before the product
            off = t.to(tl.int64) * B
        tl.store(y_ptr + off + tl.arange(0, 16), tl.load(x_ptr + tl.arange(0, 16)))


@pytest.mark.parametrize("widen,wide", [(0, False), (1, False), (2, True)])
def test_time_offsets_sees_where_the_product_is_formed(widen, wide):
    """time_offsets calls an offset narrow when its product with the index is formed in 32
    bits, widened afterwards or not, and wide only when the index is widened first."""
    res = _resources()
    found = res.time_offsets(res.compile_for_hopper(_offsets_kernel, {"WIDEN": widen}, 4).asm["ttir"])
    assert [w for _, w in found] == [wide], found
