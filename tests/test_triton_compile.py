"""Every Triton kernel compiles for a Hopper GPU (sm_90), on a machine without one.

The interpreter lane checks the numbers but accepts code the compiler rejects; this lane
runs Triton's real compiler (with its bundled ptxas) on each kernel at the block sizes the
launchers use for hidden 64 and 256, for fp32 and bf16 inputs (the LSTM kernels also with
the PeepholeLSTM's cell, as resources.configs lists them). It runs without TRITON_INTERPRET
(the kernels must be JIT functions, not interpreted ones) and is skipped on a CUDA machine,
where the GPU lane compiles and runs them."""

import os

import pytest
import torch

from conftest import BACKEND

triton = pytest.importorskip("triton")

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
    """Each kernel compiles within sm_90's limits; the persistent kernels, and only they, as
    a cooperative grid (grid_barrier needs every program resident at once)."""
    res = _resources()
    compiled = res.compile_for_hopper(kernel, constexprs, warps, dtype)
    r = res.resources(compiled)
    assert r["registers"] is not None and r["shared_bytes"] <= 227 * 1024, r
    assert compiled.metadata.launch_cooperative_grid == ("_persistent" in name), compiled.metadata


def test_cuda_launcher_reads_the_cooperative_flag():
    """What makes the compiled metadata's launch_cooperative_grid reach the driver: Triton's
    CUDA launcher reads it from the metadata and launches with the cooperative attribute
    (CU_LAUNCH_ATTRIBUTE_COOPERATIVE), in 3.6 and 3.9 alike. Checked in Triton's source,
    since no launcher can be built without a GPU."""
    import inspect

    from triton.backends.nvidia import driver

    assert "metadata.launch_cooperative_grid" in inspect.getsource(driver.CudaLauncher)


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
