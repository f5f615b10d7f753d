"""Helpers shared by the cell modules: activations, tiles, the recurrent product, the choice
among the kernel shapes, the persistent grid's rules and barrier, and the backward step
that carries dh."""

import contextlib
import os

import torch
import triton
import triton.language as tl


def alloc(*shape, device, dtype):
    """torch.empty for kernel outputs and workspaces; NaN-filled when FASTRNN_POISON=1 (the
    test lanes set it) so that an element a kernel forgets to write fails the parity checks."""
    if os.environ.get("FASTRNN_POISON", "0") == "1":
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


BLOCK_B = 16  # batch rows per program: the smallest M a tensor-core dot accepts

# The sequence kernel keeps every W_hh (and W_hr) tile on chip for the whole sequence. Up to
# this many bytes of weights per program (in their dtype: fp16/bf16 hold twice the
# elements) it is chosen; above, the step kernels run.
# Compiled for sm_90, Triton stages these loop-invariant tiles in shared memory: at the
# limit (fp32 LSTM, H=64) the forward takes 69 KB and the backward 135 KB of the 227 KB a
# block may use, with no spills (python -m fastrnn.kernels.resources). Not yet timed on a GPU.
RESIDENT_BYTES = 64 * 1024


# Every kernel addresses one step's rows (rows*stride + columns) and the weights with int32
# offsets: per element they cost registers that int64 would double. Only the time offset,
# which passes 2^31 long before one step does, is int64 (time_index); launch.plan refuses a
# layer whose one step or weight matrix reaches this many elements.
INT32_ELEMENTS = 2**31


def kernel_input(x: torch.Tensor) -> torch.Tensor:
    """x_proj (T, B, G) as the kernels read it: last dim contiguous, and one step's B rows
    within int32 offsets; a contiguous copy where its batch stride (a transposed or sliced
    x_proj) takes them to 2^31 elements and B*G does not (launch.plan refuses that too)."""
    B, G = x.shape[1], x.shape[2]
    if x.stride(2) != 1 or (B * x.stride(1) >= INT32_ELEMENTS and B * G < INT32_ELEMENTS):
        x = x.contiguous()
    return x


def pow2_block(n: int, lo: int = 16, hi: int = 64) -> int:
    """A power-of-two tile edge for n, within [lo, hi] (tl.dot needs edges >= 16 on GPUs)."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


SHAPES = ("sequence", "step", "persistent")


def kernel_shape(n_gates: int, H: int, P: int, proj: bool, elem: int = 4) -> str:
    """ "sequence" (one launch, weights on chip) when the padded weight tiles (``elem``
    bytes an element: the weights' dtype) fit RESIDENT_BYTES, else "step" (one launch
    per step, weights streamed from L2), which ``launch.plan`` turns into "persistent"
    (programs tile batch x hidden, each keeps its weight slice on chip, a grid barrier per
    step; LSTM without projection and GRU) wherever a persistent grid fits and can be
    resident at once.
    FASTRNN_TRITON_KERNEL=sequence|step|persistent forces one (tests, benchmarks)."""
    forced = forced_shape_name()
    if forced != "auto":
        return forced
    return "sequence" if resident_bytes(n_gates, H, P, proj, elem) <= RESIDENT_BYTES else "step"


def forced_shape_name() -> str:
    """FASTRNN_TRITON_KERNEL: "auto" (unset) or one of SHAPES; anything else is an error."""
    forced = os.environ.get("FASTRNN_TRITON_KERNEL", "auto")
    if forced != "auto" and forced not in SHAPES:
        raise ValueError(f"FASTRNN_TRITON_KERNEL must be auto, {', '.join(SHAPES)}, got {forced!r}")
    return forced


@contextlib.contextmanager
def forced_shape(shape: str):
    """FASTRNN_TRITON_KERNEL=shape inside the block (kernel_shape reads it per plan), its
    previous value, or none, after."""
    old = os.environ.get("FASTRNN_TRITON_KERNEL")
    os.environ["FASTRNN_TRITON_KERNEL"] = shape
    try:
        yield
    finally:
        if old is None:
            del os.environ["FASTRNN_TRITON_KERNEL"]
        else:
            os.environ["FASTRNN_TRITON_KERNEL"] = old


def resident_bytes(n_gates: int, H: int, P: int, proj: bool, elem: int = 4) -> int:
    """Bytes of the padded weight tiles a sequence-kernel program keeps on chip."""
    return (n_gates + proj) * pow2_block(H, hi=1 << 30) * pow2_block(P, hi=1 << 30) * elem


def warps_for(n_gates: int, H: int, P: int, proj: bool, elem: int = 4) -> int:
    """Warps of a sequence-kernel program: 8 once the weight tiles pass a quarter of
    RESIDENT_BYTES (compiled for sm_90, the bf16 LSTM at H=64 spilled with 4 warps and
    not with 8; python -m fastrnn.kernels.resources), else 4."""
    return 8 if resident_bytes(n_gates, H, P, proj, elem) > RESIDENT_BYTES // 4 else 4


# Activations. The contract (DESIGN.md) is a few ulp of *relative* error over the whole fp32
# range, near 0 included, on every target. tanh as 2*sigmoid(2x)-1 was ~6e-8 off in absolute
# terms near 0 (tanh(1e-8) came out 0), and tl.exp cannot give it on a GPU: on sm_90
# tl.exp(y) is ex2.approx(y * log2 e), whose rounded product alone costs up to |y| * 2^-24
# relative (tens of ulp for sigmoid(-80)); libdevice does not run under TRITON_INTERPRET=1.
# So exp and expm1 are built here from plain arithmetic (Cody-Waite reduction, one
# polynomial, 2^n from its bits), every product-sum an explicit fma, and the one division
# corrected (_div): the interpreter runs the operations the compiled kernel runs, so the
# CPU lane measures the GPU's numbers, up to fma contractions the compiler may add (they
# only drop a rounding) and the GPU's 2-ulp division, which the CPU test also models.
# Measured against float64 on 3 x 20M fp32 inputs: sigmoid 2.4 ulp, tanh 2.5 ulp at most
# (tests/test_triton.py). The polynomial is a near-minimax fit made for fastrnn, rounded to
# fp32: 3.1e-9 relative at most.
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2_HI = tl.constexpr(0.693145751953125)  # ln 2 to 16 bits: n * _LN2_HI is exact for |n| < 256
_LN2_LO = tl.constexpr(1.4286068e-06)  # fp32(ln 2 - _LN2_HI)


@triton.jit
def _expm1_reduced(y):
    """(n, expm1(r)) with y = n ln2 + r, |r| <= ln2/2, n integer-valued. expm1(r) =
    r + r^2 R(r) with R of degree 4 keeps its relative precision as r -> 0."""
    n = tl.floor(tl.fma(y, _LOG2E, 0.5))
    r = tl.fma(n, -_LN2_LO, tl.fma(n, -_LN2_HI, y))
    p = tl.fma(r, 0.0013814563, 0.0083687315)
    p = tl.fma(p, r, 0.04166839)
    p = tl.fma(p, r, 0.16666521)
    p = tl.fma(p, r, 0.49999994)
    return n, tl.fma(p, r * r, r)


@triton.jit
def _pow2(n):
    """2^n, exactly, for integer-valued n in [-126, 0] (NaN gives 1: the caller's r carries it)."""
    return ((tl.where(n < 0.0, n, 0.0).to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _exp_nonpos(y):
    """exp(y) for y <= 0 or NaN, within about 1 ulp down to the subnormals: 2^n (n in
    [-150, 0]) is applied as two exact powers of two, so a subnormal result is rounded once."""
    y = tl.where(y < -104.0, -104.0, y)  # exp(-104) rounds to 0 in fp32; -inf lands here too
    n, m = _expm1_reduced(y)
    n1 = tl.floor(n * 0.5)
    return (m + 1.0) * _pow2(n1) * _pow2(n - n1)


@triton.jit
def _div(a, d):
    """a / d for d in [1, 2], within about 0.5 ulp. On sm_90 ``/`` is div.full.f32 (2 ulp);
    one correction with the exact residual a - q*d (an fma) removes that error. Compiled for
    sm_90 this costs ~40 fewer registers in the LSTM kernels than tl.math.div_rn (div.rn.f32
    and its slow path)."""
    r = 1.0 / d
    q = a * r
    return tl.fma(tl.fma(-q, d, a), r, q)


@triton.jit
def sigmoid(x):
    """q = e / (1 + e) with e = exp(-|x|) <= 1: sigmoid(x) = q for x < 0 (nothing overflows,
    and the tail down to the subnormals keeps exp's relative precision) and 1 - q for x >= 0,
    one rounding of 1 minus an accurate term, so near saturation the result is within about
    0.5 ulp and the backward's 1 - sigmoid keeps its precision."""
    e = _exp_nonpos(-tl.abs(x))
    q = _div(e, 1.0 + e)
    return tl.where(x < 0.0, q, 1.0 - q)


@triton.jit
def tanh(x):
    """tanh|x| = -m / (2 + m) with m = expm1(-2|x|) below |x| = 0.55: no cancellation, so
    small activations keep full relative precision. Above, 1 - 2u / (1 + u) with
    u = exp(-2|x|): the result is one rounding of 1 minus a small, accurate term, within
    about 0.5 ulp near saturation. That matters beyond the forward value: backward takes
    tanh' = 1 - y^2 from the output y, which cancels as |y| -> 1, so y's error there is
    multiplied by 1 / (1 - y^2) in every gradient (PyTorch's module samples, inputs up to
    9, missed the 2e-5 bound against torch.nn by 5x with the first branch alone)."""
    a = tl.abs(x)
    a = tl.where(a > 10.0, 10.0, a)  # tanh(10) rounds to 1 in fp32; keeps 2^n normal; NaN stays
    n, mr = _expm1_reduced(-2.0 * a)
    s = _pow2(n)
    m = tl.fma(s, mr, s - 1.0)  # expm1(-2a) = 2^n expm1(r) + (2^n - 1), one rounding
    u = (mr + 1.0) * s  # exp(-2a)
    t = tl.where(a < 0.55, _div(-m, 2.0 + m), 1.0 - _div(u + u, 1.0 + u))
    # below 2^-13, tanh(x) rounds to x in fp32; the select also keeps the sign of -0.0
    return tl.where(a < 0.0001220703125, x, tl.where(x < 0.0, -t, t))


@triton.jit
def load_tile(ptr, stride_k, stride_n, K, N, BK: tl.constexpr, BN: tl.constexpr):
    """(BK, BN) weight tile, in the weights' dtype, with [k, n] = ptr[k*stride_k + n*stride_n],
    zero outside K x N. The zero padding keeps padded state columns out of every real one."""
    kk = tl.arange(0, BK)
    nn = tl.arange(0, BN)
    m = (kk < K)[:, None] & (nn < N)[None, :]
    return tl.load(ptr + kk[:, None] * stride_k + nn[None, :] * stride_n, mask=m, other=0.0)


# Triton's interpreter (3.9) multiplies bf16 dot operands as raw bit patterns; there the
# rounded operands are multiplied in fp32 instead, which gives the numbers of a half-operand
# product with fp32 accumulation.
_EMULATE_HALF_DOT = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def mm(a, w, PRECISION: tl.constexpr):
    """a @ w accumulated in fp32, with a (fp32 state or gradient) rounded to w's dtype: fp32
    (IEEE or TF32, per PRECISION) for fp32 weights; fp16/bf16 operands on the tensor cores
    for fp16/bf16 weights, as cuDNN's RNNs do, which halves the weight bytes held on chip."""
    if _EMULATE_HALF_DOT:
        out = tl.dot(a.to(w.dtype).to(tl.float32), w.to(tl.float32), input_precision=PRECISION)
    else:
        out = tl.dot(a.to(w.dtype), w, input_precision=PRECISION, out_dtype=tl.float32)
    return out


@triton.jit
def mm_slice(a, w, PRECISION: tl.constexpr):
    """``mm(a, w)`` for a persistent backward: a (BB, BK) gradient rows times its (BK, BH)
    weight slice. fp32 weights run it as (w^T a^T)^T, which puts the slice's BH hidden
    units on the MMA's M instead of the 16 batch rows, which 8 warps could not split (they
    repeated the product). fp16/bf16 weights keep ``mm``: there the transposed form spilled
    (LSTM backward H=512: 0 -> 440 B). The forwards stack their gates instead (persistent_product)."""
    if w.dtype == tl.float32:
        out = tl.trans(tl.dot(tl.trans(w), tl.trans(a), input_precision=PRECISION, out_dtype=tl.float32))
    else:
        out = mm(a, w, PRECISION)
    return out


# The carry of a persistent backward, dh_{t-1}[:, own] = sum_n dgates_n @ W_n[:, own], is a
# (BB, BH) tile: with BH < 64 the 8 warps cannot share it as one MMA (mma.sync's 16 x 8
# tiles give them fewer than 8 tiles, and they repeat the product). There the gates' K is
# split in KS parts which a batched product puts on its batch axis, one per warp, and the
# partial products are summed at the end. KS == 1: one 2-D product per gate.
@triton.jit
def split_tile(w_ptr, n, j0, H, KS: tl.constexpr, BKS: tl.constexpr, BH: tl.constexpr):
    """Gate n's columns of W row-major (G*H, H) this program's carry multiplies: (BKS, BH),
    [k, j] = W[n*H + k, j0 + j] when KS == 1, else (KS, BKS, BH), the gate's rows in KS parts,
    [p, k, j] = W[n*H + p*BKS + k, j0 + j]; zero past H."""
    if KS == 1:
        out = gate_tile(w_ptr, n, j0, H, H, BKS, BH)
    else:
        kin = (tl.arange(0, KS) * BKS)[:, None, None] + tl.arange(0, BKS)[None, :, None]
        j = tl.arange(0, BH)[None, None, :]
        m = (kin < H) & ((j0 + j) < H)
        out = tl.load(w_ptr + (n * H + kin) * H + j0 + j, mask=m, other=0.0)
    return out


@triton.jit
def split_zeros(KS: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr):
    """The carry's fp32 accumulator: (BB, BH), or (KS, BB, BH) partial products."""
    if KS == 1:
        out = tl.zeros((BB, BH), tl.float32)
    else:
        out = tl.zeros((KS, BB, BH), tl.float32)
    return out


@triton.jit
def split_dot(acc, g_ptr, stride, rows, rmask, H, w, KS: tl.constexpr, BKS: tl.constexpr, PRECISION: tl.constexpr):
    """acc + one gate's share of the carry: g @ w for the (B, H) gradient rows at g_ptr (row
    stride ``stride``, fp32, written by other programs: read past L1) and w = split_tile(...),
    as KS partial products when KS > 1."""
    if KS == 1:
        acc += mm_slice(load_rows_l2(g_ptr, stride, rows, rmask, tl.arange(0, BKS), H), w, PRECISION)
    else:
        kin = (tl.arange(0, KS) * BKS)[:, None, None] + tl.arange(0, BKS)[None, None, :]
        m = rmask[None, :, None] & (kin < H)
        a3 = tl.load(g_ptr + rows[None, :, None] * stride + kin, mask=m, other=0.0, cache_modifier=".cg")
        if _EMULATE_HALF_DOT:
            acc = tl.dot(a3.to(w.dtype).to(tl.float32), w.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a3.to(w.dtype), w, acc, input_precision=PRECISION, out_dtype=tl.float32)
    return acc


@triton.jit
def split_total(acc, KS: tl.constexpr):
    """The carry (BB, BH) from split_dot's accumulator."""
    if KS == 1:
        out = acc
    else:
        out = tl.sum(acc, axis=0)
    return out


@triton.jit
def gate_stack_t(w_ptr, j0, H, K, k0, G: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr):
    """(4*BH, BK): a persistent program's rows of the G <= 4 gates' weights stacked, over the
    columns k0, k0+1, ..., [n*BH + j, k] = W[n*H + j0 + j, k0 + k] for W row-major (G*H, K);
    zero for a unit j0 + j >= H, a column past K, and the rows of gates n >= G (a GRU's
    fourth)."""
    r = tl.arange(0, 4 * BH)
    n = r // BH
    j = r % BH
    kk = tl.arange(0, BK)
    m = ((n < G) & ((j0 + j) < H))[:, None] & ((k0 + kk) < K)[None, :]
    return tl.load(w_ptr + ((n * H + j0 + j)[:, None] * K + k0) + kk[None, :], mask=m, other=0.0)


@triton.jit
def stacked_slices(
    w_ptr, j0, H, G: tl.constexpr, BH: tl.constexpr, KA: tl.constexpr, KB: tl.constexpr, KC: tl.constexpr
):
    """A persistent forward's W_hh slice, stacked (gate_stack_t), in the column chunks of
    k_chunks; an absent chunk (width 0) repeats the first, unused."""
    w_a = gate_stack_t(w_ptr, j0, H, H, 0, G, BH, KA)
    w_b = w_a
    w_c = w_a
    if KB > 0:
        w_b = gate_stack_t(w_ptr, j0, H, H, KA, G, BH, KB)
    if KC > 0:
        w_c = gate_stack_t(w_ptr, j0, H, H, KA + KB, G, BH, KC)
    return w_a, w_b, w_c


@triton.jit
def stacked_dot(acc, a, w4, PRECISION: tl.constexpr):
    """acc (4*BH, BB) + w4 @ a^T for a (BB, BK) chunk of the state and the stacked slice's
    matching columns, accumulated in fp32 with a rounded to the weights' dtype, as ``mm``."""
    if _EMULATE_HALF_DOT:
        acc = tl.dot(w4.to(tl.float32), tl.trans(a.to(w4.dtype).to(tl.float32)), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(w4, tl.trans(a.to(w4.dtype)), acc, input_precision=PRECISION, out_dtype=tl.float32)
    return acc


@triton.jit
def persistent_product(
    hcur,
    w_a,
    w_b,
    w_c,
    H,
    rows,
    rmask,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    KB: tl.constexpr,
    KC: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The four (BB, BH) gate products h_{t-1} @ W_n^T of a persistent forward: one
    (4*BH, K) x (K, BB) product of the stacked slice (stacked_slices) by h^T, h read from
    hcur (B, H) in the chunks KA + KB + KC >= H (k_chunks: K padded to a multiple of the
    MMA's K, not to a power of two). The hidden units of all gates are on the MMA's M
    dimension, 4*BH >= 64 rows, so sm_90 runs it as wgmma with the weights read from shared
    memory (64-row tiles, one per warpgroup) instead of mma.sync over the 16 batch rows with
    the warps repeating the product. Compiled for sm_90 as launched (python -m
    fastrnn.kernels.rehearsal), the bf16 LSTM forward at H=512 went from 255 registers
    and 120 B of stack (mma.sync, warpsPerCTA [1, 8]) to 128 and none."""
    acc = stacked_dot(
        tl.zeros((4 * BH, BB), tl.float32), load_rows_l2(hcur, H, rows, rmask, tl.arange(0, KA), H), w_a, PRECISION
    )
    if KB > 0:
        h_b = load_rows_l2(hcur + KA, H, rows, rmask, tl.arange(0, KB), H - KA)
        acc = stacked_dot(acc, h_b, w_b, PRECISION)
    if KC > 0:
        h_c = load_rows_l2(hcur + KA + KB, H, rows, rmask, tl.arange(0, KC), H - KA - KB)
        acc = stacked_dot(acc, h_c, w_c, PRECISION)
    acc = tl.permute(tl.reshape(acc, (2, 2, BH, BB)), (3, 2, 0, 1))  # [b, j, n // 2, n % 2]
    x0, x1 = tl.split(acc)
    i, g = tl.split(x0)
    f, o = tl.split(x1)
    return i, f, g, o


@triton.jit
def gate_tile_t(w_ptr, n, j0, H, K, BK: tl.constexpr, BN: tl.constexpr):
    """(BK, BN) block of W^T for gate n: [k, j] = W[n*H + j0 + j, k], W row-major (G*H, K).
    The operand of a forward product h @ W^T restricted to the gate's units j0, j0+1, ..."""
    return load_tile(w_ptr + (n * H + j0) * K, 1, K, K, H - j0, BK, BN)


@triton.jit
def gate_tile(w_ptr, n, j0, H, N, BK: tl.constexpr, BN: tl.constexpr):
    """(BK, BN) block of W for gate n: [k, j] = W[n*H + k, j0 + j], W row-major (G*H, N).
    The operand of a backward product dgate_n @ W restricted to the columns j0, j0+1, ..."""
    return load_tile(w_ptr + n * H * N + j0, N, 1, H, N - j0, BK, BN)


@triton.jit
def load_rows(ptr, stride, rows, row_mask, cols, N):
    """(BB, BN) fp32: ptr[rows, cols] of a matrix with row stride ``stride``, zero outside."""
    m = row_mask[:, None] & (cols < N)[None, :]
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def load_rows_l2(ptr, stride, rows, row_mask, cols, N):
    """load_rows past L1 (.cg): for state that other programs of a persistent grid wrote
    (L1 is not coherent with their stores)."""
    m = row_mask[:, None] & (cols < N)[None, :]
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=m, other=0.0, cache_modifier=".cg")


@triton.jit
def program_tile(B, BB: tl.constexpr, BN: tl.constexpr):
    """This program's BB batch rows (program axis 0), their mask, and its BN columns
    (program axis 1)."""
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    return rows, rows < B, cols


@triton.jit
def store_rows(ptr, stride, rows, row_mask, cols, N, value):
    """ptr[rows, cols] = value (cast to the pointer's dtype), inside the matrix only."""
    m = row_mask[:, None] & (cols < N)[None, :]
    tl.store(ptr + rows[:, None] * stride + cols[None, :], value.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def matmul_rows(
    acc,
    a_ptr,
    stride_a,
    rows,
    row_mask,
    K,
    w_ptr,
    stride_wk,
    stride_wn,
    cols,
    col_mask,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """acc (BB, BN) += A[rows, 0:K] @ W[0:K, cols], with W[k, n] at w_ptr + k*stride_wk + n*stride_wn.

    A and W are read in K-chunks of BK and multiplied as ``mm`` does.
    """
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < K
        a = tl.load(a_ptr + rows[:, None] * stride_a + kk[None, :], mask=row_mask[:, None] & km[None, :], other=0.0)
        w = tl.load(
            w_ptr + kk[:, None] * stride_wk + cols[None, :] * stride_wn, mask=km[:, None] & col_mask[None, :], other=0.0
        )
        acc += mm(a, w, PRECISION)
    return acc


@triton.jit
def load_cell_params(ptr, jj, H, HAS: tl.constexpr, ROWS: tl.constexpr):
    """The (ROWS, BH) fp32 tile [r, j] = ptr[r*H + jj[j]] of a cell's per-unit parameters
    ((ROWS, H) contiguous), zero past H; 0.0 when the cell has none (HAS false). Kernels
    load it once (before the time loop where they have one) and hand it to the cell."""
    if HAS:
        rr = tl.arange(0, ROWS)
        cp = tl.load(ptr + rr[:, None] * H + jj[None, :], mask=(jj < H)[None, :], other=0.0).to(tl.float32)
    else:
        cp = 0.0
    return cp


@triton.jit
def cell_param(cp, r: tl.constexpr):
    """Row r of a load_cell_params tile as a (1, BH) tile, which broadcasts over the batch
    rows of the cell's (BB, BH) operands."""
    rr = tl.arange(0, cp.shape[0])
    return tl.sum(tl.where(rr[:, None] == r, cp, 0.0), axis=0)[None, :]


@triton.jit
def step_index(s, T, REVERSE: tl.constexpr):
    """Time index of the s-th step processed in forward order."""
    if REVERSE:
        t = T - 1 - s
    else:
        t = s
    return t


@triton.jit
def time_index(s, T, REVERSE: tl.constexpr):
    """step_index as int64, for kernels that loop over time: they address step t of a
    (T, B, G) tensor at t*B*G elements (t*sxt for x_proj), which passes 2^31 within a GPU's
    memory (T=1024, B=128, G=4*4096), while Triton types the loop counter and integer
    arguments below 2^31 as int32. So every product with the index is formed in 64 bits
    (tests/test_triton_compile.py reads it in the compiled IR). Offsets within one step
    (rows*stride + columns) stay int32: launch.plan refuses a layer whose one step passes
    2^31 elements."""
    return step_index(tl.cast(s, tl.int64), T, REVERSE)


@triton.jit
def active_rows(t, rows, row_mask, len_ptr, HAS_LENGTHS: tl.constexpr):
    """(BB,) bool: rows whose sequence is still running at step t (t < lengths[b])."""
    if HAS_LENGTHS:
        lens = tl.load(len_ptr + rows, mask=row_mask, other=0)
        act = row_mask & (t < lens)
    else:
        act = row_mask
    return act


@triton.jit(do_not_specialize=["t"])
def carry_dh_step_kernel(
    dg_ptr,
    G,  # dgates of step t (B, G) fp32, contiguous
    w_ptr,  # w_hh (G, N) contiguous: dh_{t-1} = dgates_t @ W_hh
    direct_ptr,  # (B, N) fp32 term added to the product (GRU: dh*z), when HAS_DIRECT
    dh_ptr,  # (B, N) fp32 carried gradient, updated in place
    len_ptr,
    t,
    B,
    N,
    HAS_DIRECT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Backward step kernel, shared by every cell: rows active at step t take
    dh = dgates_t @ W_hh (+ direct); the others keep the gradient they carry. Each program
    reads and writes only its own (rows, cols) tile of dh, so the update is in place."""
    rows, rmask, cols = program_tile(B, BB, BN)
    act = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)
    if HAS_DIRECT:
        acc = load_rows(direct_ptr, N, rows, rmask, cols, N)
    else:
        acc = tl.zeros((BB, BN), tl.float32)
    acc = matmul_rows(acc, dg_ptr, G, rows, rmask, G, w_ptr, N, 1, cols, cols < N, BK, PRECISION)
    old = load_rows(dh_ptr, N, rows, rmask, cols, N)
    store_rows(dh_ptr, N, rows, rmask, cols, N, tl.where(act[:, None], acc, old))


# Polls of a counter after which grid_barrier gives up (the default of the persistent
# kernels' max_polls). A legitimate wait is one step's compute of the slowest program of the
# batch block, plus the start-up skew of the grid at the first step: microseconds, tens of
# polls at about 1 us an L2 atomic round trip (assumed, to be measured on a GPU). 2^20 polls
# is about a second: some 10^4 times the longest legitimate wait, and a grid that can never
# meet still fails in about a second instead of hanging.
BARRIER_POLLS = 1 << 20
# OR-ed into every counter by a program that gives up: the counters turn negative and stay
# so (an arrival adds 1 to the low bits, which reach at most T x hidden tiles, far below
# 2^31 for any sequence that fits in memory), so every program sees the stop in the atomic
# it already makes, at no cost per step while the grid runs.
_STOPPED = tl.constexpr(-(1 << 31))


@triton.jit
def grid_barrier(count_ptr, err_ptr, max_polls, s):
    """End of step s for the programs of this batch block (program axis 0): wait until all
    of them (program axis 1) have arrived, counted on count_ptr[batch block].

    Each program arrives once per step (acq_rel: its stores are visible before the count
    moves, and the count it gets back acquires the stores of those that arrived before it)
    and spins on acquire reads. That needs every program of the batch block resident at
    once: the launcher checks the grid against the device and launches it as a cooperative
    grid, which the driver refuses when it cannot be co-resident. Should they still not be
    (another process on the GPU, MPS or MIG), the spin ends after max_polls polls: the
    program records the step in err_ptr[0] (1 + s; the host turns it into an error and
    discards the outputs) and stops every batch block's counter (_STOPPED). From then on no
    program of the grid waits: each barrier returns at its arrival, so the kernel ends after
    the remaining steps' compute. (The time loop cannot end early instead: Triton has no
    break, and as a while loop the LSTM forward at H=512 compiled for sm_90 took 15 KB of
    stack.) Scalar atomics run on one thread and their result is broadcast to the program,
    so every thread takes the same branch.
    """
    counter = count_ptr + tl.program_id(0)
    target = (s + 1) * tl.num_programs(1)
    tl.debug_barrier()  # every thread of this program has issued its stores
    seen = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") + 1
    polls = 0
    while (seen >= 0) & (seen < target) & (polls < max_polls):
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        polls += 1
    if (seen >= 0) & (seen < target):
        tl.atomic_max(err_ptr, s + 1, sem="relaxed", scope="gpu")
        for b in range(tl.num_programs(0)):
            tl.atomic_or(count_ptr + b, _STOPPED, sem="release", scope="gpu")
    tl.debug_barrier()


# Weight bytes a persistent program may hold: about half an H100/H200 SM's shared memory
# (228 KiB), where Triton stages the loop-invariant dot operands (python -m
# fastrnn.kernels.resources). A starting point for the GPU measurements, not a measured optimum.
PERSISTENT_BYTES = 128 * 1024
# Compiled for sm_90: with 4 warps the LSTM forward spills at H=256 (255 registers + 32 B
# stack); with 8 it does not (249). At H=512 it spills with either (864 B stack with 8).
PERSISTENT_WARPS = 8
# Weight elements a persistent program loads when they cannot be vectorised: 64 a thread
# at PERSISTENT_WARPS
UNALIGNED_ELEMENTS = 64 * 32 * PERSISTENT_WARPS


def persistent_tile(H, n_gates, elem=4, budget=None):
    """Columns per persistent program: the widest power-of-two tile, at most 64, whose
    weight slices fit PERSISTENT_BYTES; None where not even 16 columns (tl.dot's smallest
    edge) fit (fp32 LSTM at H > 512: 256 KB at H=1024). The slices are stacked as four
    gates (gate_stack_t; a GRU's fourth is zeros), 4 x H x BH elements of elem bytes. Where
    H is not a multiple of 16 the launch cannot prove the rows 16-byte aligned, the slices
    load an element at a time, one register each, and the tile is capped at
    UNALIGNED_ELEMENTS (bf16 H=200: 64 columns spilled 272 B of 255 registers, sm_90)."""
    per_col = 4 * pow2_block(H, hi=1 << 30)
    budget = PERSISTENT_BYTES if budget is None else budget
    cap = budget // elem if H % 16 == 0 else min(budget // elem, UNALIGNED_ELEMENTS)
    if per_col * 16 > cap:
        return None
    return min(64, 1 << ((cap // per_col).bit_length() - 1))


def k_chunks(H: int) -> tuple:
    """(KA, KB, KC): the column chunks of a persistent forward's product, powers of two of
    at least 16 (or 0, absent), KA > KB > KC, whose sum is the smallest multiple of 16 at
    least H that three such chunks make (tl.dot's operands have power-of-two edges; the
    MMA's K is at most 16). H=200: 128 + 64 + 16 = 208 columns where a power of two pads
    to 256; H=768: 512 + 256; H=240: 256 (it would take four chunks)."""
    K = max(16, -(-H // 16) * 16)
    while bin(K).count("1") > 3:
        K += 16
    bits = [1 << b for b in range(K.bit_length() - 1, -1, -1) if K >> b & 1]
    return tuple(bits + [0] * (3 - len(bits)))


def carry_splits(H: int, BH: int) -> int:
    """KS: the parts a persistent backward splits each gate's K (the state row, padded to a
    power of two) in for its carry (split_dot), one per warp: 1 (one 2-D product) where the
    (16, BH) tile gives PERSISTENT_WARPS warps an MMA tile each (BH >= 64), else as many
    parts of at least 16 columns (the MMA's K) as there are warps. Compiled for sm_90 (LSTM,
    bf16, H=512, BH=32): 128 -> 64 mma.sync a warp a step; at H=1024 (BH=16) 512 -> 64."""
    if BH >= 64:
        return 1
    return max(1, min(PERSISTENT_WARPS, pow2_block(H, hi=1 << 30) // 16))


# Shared memory a persistent program takes beyond its weight slice (state, products,
# layout conversions): 16-32 KB compiled for sm_90 (bench/NOTES-gpu.md's table)
PERSISTENT_EXTRA_BYTES = 36 * 1024


def persistent_budget(device) -> int:
    """PERSISTENT_BYTES, or less on a CUDA device whose blocks get less shared memory than
    an H100's 227 KiB (sm_86/sm_89: 99 KiB): the slice plus PERSISTENT_EXTRA_BYTES must fit
    (a block may opt in to 1 KiB less than the multiprocessor has)."""
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return PERSISTENT_BYTES
    per_block = torch.cuda.get_device_properties(device).shared_memory_per_multiprocessor - 1024
    return max(0, min(PERSISTENT_BYTES, per_block - PERSISTENT_EXTRA_BYTES))


def persistent_grid(B, H, n_gates, device, elem=4):
    """(n_b, n_h, BH) for a persistent kernel over B rows and H units, or None where it
    cannot run: no tile fits (persistent_tile) or the grid could not be resident at once."""
    BH = persistent_tile(H, n_gates, elem, persistent_budget(device))
    if BH is None:
        return None
    n_b, n_h = triton.cdiv(B, BLOCK_B), triton.cdiv(H, BH)
    return (n_b, n_h, BH) if persistent_grid_ok(n_b, n_h, device) else None


# Multiprocessors of the GPU a rehearsal on meta tensors stands for (kernels/rehearsal.py)
META_SMS = 0


def multiprocessors(device) -> int:
    """Multiprocessors of ``device``: a CUDA device's (none where CUDA is absent, as when a
    plan is made for a device object only), the rehearsed GPU's on meta tensors, 1
    elsewhere (the interpreter runs one program at a time)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return 0
        return torch.cuda.get_device_properties(device).multi_processor_count
    return META_SMS if device.type == "meta" else 1


def persistent_grid_ok(n_b, n_h, device) -> bool:
    """Whether a persistent grid (n_b batch blocks x n_h hidden tiles) can run without
    deadlock: every program resident at once, at one program per SM (each holds a large
    weight slice). Under the interpreter programs run one after another, so only one
    program along the hidden axis can work."""
    if device.type not in ("cuda", "meta"):
        return n_h == 1
    return n_b * n_h <= multiprocessors(device)


def time_steps(T, reverse):
    """(s, t, prev) in processing order: prev is the previous step's time index, -1 at s = 0."""
    order = range(T - 1, -1, -1) if reverse else range(T)
    prev = -1
    for s, t in enumerate(order):
        yield s, t, prev
        prev = t
