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


# ---------------------------------------------------------------------------------------
# The dispatcher's own launches, rehearsed on meta tensors (kernels/rehearsal.py): every
# config of the GPU benchmark suite (python -m bench --suite gpu_goals) in each shape the
# suite runs (auto and the pinned step and persistent providers), and the GPU test lane's
# forced shapes, compiled for sm_90 with the argument types the launchers pass. Each launch
# must be within an sm_90's limits (shared memory, registers, grid, a persistent grid
# resident at one program per multiprocessor of an H100), or the layer refused with the
# dispatcher's message; nothing may reach a launch that fails.
# ---------------------------------------------------------------------------------------
def _rehearsal():
    import importlib

    import fastrnn

    fastrnn.backends._import("fastrnn.kernels")
    return importlib.import_module("fastrnn.kernels.rehearsal")


def _gpu_goal_configs():
    from bench.configs import VARIANTS, gpu_goal_configs

    return gpu_goal_configs(["lstm", "gru", "rnn", *VARIANTS], ["fwd", "fwdbwd"])  # the suite's defaults


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GOAL_CASES = _gpu_goal_configs()


def _check_rehearsal(r, forced: str):
    reh = _rehearsal()
    if r.refused:
        assert forced == "sequence" and "Use FASTRNN_TRITON_KERNEL=step or auto" in r.refused, r.refused
        return []
    assert r.launches, "the rehearsal recorded no launch"
    if forced in ("sequence", "step"):
        assert r.shape == forced
    report = []
    for lch, n in r.launches.items():
        res = reh.compiled(lch)
        bad = reh.problems(lch, res)
        assert not bad, f"{lch.name} grid {lch.grid} x{n}: {bad} ({res})"
        report.append((lch.name, lch.grid, n, res))
    return report


@pytest.mark.parametrize("cfg", GOAL_CASES, ids=[c.label().replace(" ", "-") for c in GOAL_CASES])
def test_gpu_goals_launches_fit_sm90(cfg):
    reh = _rehearsal()
    for shape in ("auto", "step", "persistent"):
        r = reh.rehearse(cfg.cell, cfg.T, cfg.B, cfg.I, cfg.H, _DTYPES[cfg.dtype], cfg.mode, shape)
        print(cfg.label(), shape, "->", r.shape, _check_rehearsal(r, shape))


# tests/test_triton.py's GPU lane (TestGPU): input 64, hidden 200, 2 layers, bidirectional,
# T=63, B=3, every cell (and the LSTM with a projection) in every forced shape and dtype.
# (The smaller hidden sizes the interpreter forces compile above, at H=64.)
GPU_LANE_CASES = [
    (cell, H, dtype, shape, kw)
    for cell, kw in (
        ("lstm", {}),
        ("lstm", dict(proj_size=48)),
        ("gru", {}),
        ("rnn", {}),
        ("rnn", dict(nonlinearity="relu")),
        ("peephole_lstm", {}),
        ("layernorm_lstm", {}),
    )
    for H in (200,)
    for dtype in ("float32", "bfloat16", "float16")
    for shape in ("sequence", "step", "persistent")
    if kw.get("proj_size", 0) < H
]


@pytest.mark.parametrize(
    "cell,H,dtype,shape,kw",
    GPU_LANE_CASES,
    ids=[f"{c}-{'-'.join(map(str, k.values()))}-H{h}-{d}-{s}".replace("--", "-") for c, h, d, s, k in GPU_LANE_CASES],
)
def test_gpu_lane_forced_shapes_fit_sm90(cell, H, dtype, shape, kw):
    reh = _rehearsal()
    r = reh.rehearse(cell, 63, 3, 64, H, _DTYPES[dtype], "fwdbwd", shape, num_layers=2, bidirectional=True, **kw)
    print(cell, H, dtype, shape, "->", r.shape, _check_rehearsal(r, shape))


def test_rehearsal_records_what_the_dispatcher_runs():
    """The rehearsal is the dispatcher's run: a persistent grid is chosen exactly when it is
    resident on the rehearsed GPU (132 multiprocessors: B=1024 is 64 batch blocks x 4 hidden
    tiles at H=256 bf16, 256 programs, which fall back to the step kernels), the step shape
    launches once per step, and a forced sequence kernel past its fit is refused. The
    GEMMs are recorded too: the input projection and its dx, which an eager call launches
    directly (``_projection._EagerLinear``), and the weight gradients after the loop."""
    import importlib

    reh = _rehearsal()
    r = reh.rehearse("lstm", 10, 16, 32, 256, torch.bfloat16, "fwdbwd", "persistent")
    assert r.shape == "persistent" and {lch.name for lch in r.launches} == {
        "lstm_fwd_persistent_kernel",
        "lstm_bwd_persistent_kernel",
        "linear_kernel",  # x @ W_ih^T + b, and dx = dgates @ W_ih
        "weight_grad_kernel",  # dW_ih, dW_hh
    }
    L = importlib.import_module("fastrnn.kernels.launch")
    with L.shapes_used() as used:  # what bench rows report as kernel_shapes
        assert reh.rehearse("lstm", 10, 1024, 32, 256, torch.bfloat16, "fwd", "persistent").shape == "step"
    assert used == ["step"]
    r = reh.rehearse("gru", 10, 16, 32, 256, torch.float32, "fwd", "step")
    assert sum(n for lch, n in r.launches.items() if lch.name == "gru_fwd_step_kernel") == 10
    # fp32 products rehearse TF32, as a GPU at torch's defaults runs them
    assert all(dict(lch.constexprs)["PRECISION"] == "tf32" for lch in r.launches)
    assert "cannot run this layer" in reh.rehearse("rnn", 10, 16, 32, 256, torch.float32, "fwd", "sequence").refused
