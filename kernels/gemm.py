"""The GEMMs of a layer on the triton backend outside the recurrence kernels: the weight
gradients ``dW = dG^T X`` summed over all T*B rows of a sequence (dW_hh = dgates^T h_prev,
dW_hr = dh_out^T m after the backward loop, fastrnn.ops; dW_ih = dx_proj^T x) through
``weight_grad``, and the input projection ``x_proj = x @ W_ih^T + b`` and its input
gradient ``dx = dx_proj @ W_ih`` through ``linear`` and ``linear_backward``
(fastrnn.functional, as the op ``fastrnn::linear``).

Why a kernel of its own rather than ``torch.mm``: on CUDA a torch matmul takes TF32 from
``torch.backends.cuda.matmul`` (IEEE by PyTorch's default), while torch.nn's LSTM on cuDNN
takes it from the cuDNN RNN setting (TF32 by default); a layer's weight gradients would
then follow another switch than its recurrence. Flipping the matmul switch around the call
is not thread-safe and breaks under torch.compile tracing, and ``torch.mm(out_dtype=...)``
picks no precision for fp32. Here the precision is an argument: ``PRECISION`` is
``fastrnn.numerics.dot_precision`` of the weights, the rule the recurrence kernels follow.
For fp16/bf16 weights both operands are rounded to the weights' dtype on load (dG comes
from the fp32 workspace) and multiplied on the tensor cores with fp32 accumulation, as
cuDNN's RNNs compute their weight gradients.

The weight gradients are long and thin: K = T*B rows (thousands to millions) against an output of
the weights' size, which a grid over output tiles alone leaves mostly idle (a 256 x 64
dW_hh is 4 tiles of 64 x 64). So K is split: program (i, j, s) sums rows
[s*k_split, (s+1)*k_split) of output tile (i, j) into its own fp32 partial, and the
partials are summed afterwards in a fixed order (deterministic: no atomics). Offsets along
K are int64: T*B*G passes 2^31 on long sequences. The projection's products have the T*B
rows along M instead (a grid over output tiles has plenty of programs), with int64 row
offsets for the same reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastrnn.numerics import dot_precision

from ._common import INT32_ELEMENTS, alloc, mm, multiprocessors, pow2_block
from .launch import launch

GEMM_BK = 32  # rows of K per step of the loop
GEMM_WARPS = 4
# Splits of K aim at this many programs per SM, and give each split at least MIN_SPLIT_CHUNKS
# steps of GEMM_BK rows: fewer would spend more on writing and summing fp32 partials of the
# whole output tile than on the product itself.
PROGRAMS_PER_SM = 2
MIN_SPLIT_CHUNKS = 8

OPERANDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# Triton's interpreter (3.6 and 3.9) converts fp32 to bf16 by truncation, where a GPU rounds
# to nearest even; under the interpreter the bits are rounded first, so that the CPU lane
# computes the GPU's operands (and the GEMM's test can hold it to fp32 accumulation).
_INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _bf16(x):
    """fp32 x in bf16, rounded to nearest even."""
    if _INTERPRETING:
        u = x.to(tl.uint32, bitcast=True)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        x = tl.where(x != x, x, u.to(tl.float32, bitcast=True))
    return x.to(tl.bfloat16)


@triton.jit
def _operand(x, OPERAND: tl.constexpr):
    """x rounded to nearest even in the product's operand dtype (the weights')."""
    if OPERAND == "bf16":
        y = _bf16(x.to(tl.float32))
    elif OPERAND == "fp16":
        y = x.to(tl.float16)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def weight_grad_kernel(
    dg_ptr,
    x_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_dg,
    stride_x,
    k_split,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    OPERAND: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[s, m, n] = sum over rows k of split s of dg[k, m] * x[k, n], fp32.

    dg (K, M) and x (K, N) are row-major with unit column stride; out is (splits, M, N)
    contiguous. Program (i, j, s) owns output tile (i, j) and rows [s*k_split, ...)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    s = tl.program_id(2)
    m_mask = rm < M
    n_mask = rn < N
    k_lo = s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        kk = (k0 + tl.arange(0, BK)).to(tl.int64)
        k_mask = kk < k_hi
        a = tl.load(dg_ptr + kk[None, :] * stride_dg + rm[:, None], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(x_ptr + kk[:, None] * stride_x + rn[None, :], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc += mm(_operand(a, OPERAND), _operand(b, OPERAND), PRECISION)
    out = out_ptr + s.to(tl.int64) * M * N + rm[:, None] * N + rn[None, :]
    tl.store(out, acc, mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def linear_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_x,
    stride_wk,
    stride_wn,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    OPERAND: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """y[m, n] = sum_k x[m, k] * w[k, n] (+ bias[n]), accumulated in fp32, rounded once to
    y's dtype. x (M, K) row-major with unit column stride, w[k, n] at k*stride_wk +
    n*stride_wn (W^T of a row-major W for the projection, W itself for its input
    gradient), y (M, N) contiguous. Program (i, j) owns output tile (i, j)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    m_mask = rm < M
    n_mask = rn < N
    rows = rm.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        k_mask = kk < K
        a = tl.load(x_ptr + rows[:, None] * stride_x + kk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(
            w_ptr + kk[:, None] * stride_wk + rn[None, :] * stride_wn, mask=k_mask[:, None] & n_mask[None, :], other=0.0
        )
        acc += mm(_operand(a, OPERAND), _operand(b, OPERAND), PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if y_ptr.dtype.element_ty == tl.bfloat16:
        y = _bf16(acc)
    else:
        y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * N + rn[None, :], y, mask=m_mask[:, None] & n_mask[None, :])


LINEAR_BM = 64  # rows (of T*B) per program


def blocks(M: int, N: int) -> dict:
    """Block sizes and warps of weight_grad_kernel for an (M, N) output."""
    return dict(BM=pow2_block(M), BN=pow2_block(N), BK=GEMM_BK, num_warps=GEMM_WARPS)


@dataclass(frozen=True)
class GemmPlan:
    """What launch.launch needs of a plan: block sizes and warps, and the grid."""

    meta: dict
    tiles: tuple  # (tiles along M, tiles along N[, splits of K])
    k_split: int = 0  # weight_grad: rows of K per split, a multiple of BK

    def grid(self, width: str | None = None) -> tuple:
        return self.tiles


def plan(M: int, N: int, K: int, device: torch.device, splits: int | None = None) -> GemmPlan:
    """Tiles and splits of K for dG^T X with an (M, N) output over K rows: as many splits as
    PROGRAMS_PER_SM programs per SM ask for, each at least MIN_SPLIT_CHUNKS steps long
    (``splits`` forces a count, for tests; it is rounded to what K allows)."""
    meta = blocks(M, N)
    tiles = triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"])
    chunks = triton.cdiv(K, meta["BK"])
    if splits is None:
        sms = multiprocessors(device)
        splits = min(triton.cdiv(PROGRAMS_PER_SM * sms, tiles), chunks // MIN_SPLIT_CHUNKS)
    splits = max(1, min(splits, chunks))
    k_split = triton.cdiv(chunks, splits) * meta["BK"]
    n_split = triton.cdiv(K, k_split)
    return GemmPlan(meta, (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"]), n_split), k_split)


def _check_weight_offsets(what: str, n: int) -> None:
    """Offsets along the rows (T*B) are 64-bit; within a weight-shaped (M, N) or (G, I)
    matrix they are 32-bit, which a matrix of 2^31 elements or more would wrap."""
    if n >= INT32_ELEMENTS:
        raise ValueError(
            f"the triton backend cannot run this layer: its GEMMs address the {what} ({n} elements) with "
            f"32-bit offsets, which reach up to {INT32_ELEMENTS - 1}. Use backend='reference'."
        )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t with unit column stride (the kernel reads rows at any row stride)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def weight_grad(dg: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, splits: int | None = None) -> torch.Tensor:
    """dg^T @ x for dg (R, M) and x (R, N) (any float dtypes): an (M, N) fp32 tensor, from
    operands in ``weight``'s dtype with fp32 accumulation, fp32 products in the precision
    ``dot_precision(weight)`` gives (TF32 on CUDA exactly where torch.nn's LSTM uses it)."""
    if dg.dim() != 2 or x.dim() != 2 or dg.shape[0] != x.shape[0]:
        raise ValueError(f"weight_grad: rows (R, M) and (R, N) expected, got {tuple(dg.shape)} and {tuple(x.shape)}")
    if weight.dtype not in OPERANDS:
        raise RuntimeError(f"fastrnn triton backend supports float32, float16 and bfloat16, got {weight.dtype}")
    (K, M), N = dg.shape, x.shape[1]
    _check_weight_offsets("weight gradient", M * N)
    if K == 0 or M == 0 or N == 0:
        return torch.zeros(M, N, device=dg.device, dtype=torch.float32)
    dg, x = _rows(dg), _rows(x)
    p = plan(M, N, K, dg.device, splits)
    out = alloc(p.tiles[2], M, N, device=dg.device, dtype=torch.float32)
    launch(
        weight_grad_kernel,
        p,
        dg_ptr=dg,
        x_ptr=x,
        out_ptr=out,
        M=M,
        N=N,
        K=K,
        stride_dg=dg.stride(0),
        stride_x=x.stride(0),
        k_split=p.k_split,
        OPERAND=OPERANDS[weight.dtype],
        PRECISION=dot_precision(weight),
    )
    return out[0] if p.tiles[2] == 1 else out.sum(0)


def linear_blocks(N: int) -> dict:
    """Block sizes and warps of linear_kernel for outputs N wide."""
    return dict(BM=LINEAR_BM, BN=pow2_block(N), BK=GEMM_BK, num_warps=GEMM_WARPS)


def _linear(x: torch.Tensor, w: torch.Tensor, wk: int, wn: int, N: int, bias, weight) -> torch.Tensor:
    """x @ w (+ bias) with w[k, n] at strides (wk, wn) of ``w``; operands and precision
    from ``weight``, the result in x's dtype."""
    if weight.dtype not in OPERANDS:
        raise RuntimeError(f"fastrnn triton backend supports float32, float16 and bfloat16, got {weight.dtype}")
    x = _rows(x)
    M, K = x.shape
    _check_weight_offsets("weight", w.numel())
    y = alloc(M, N, device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y
    meta = linear_blocks(N)
    p = GemmPlan(meta, (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"])))
    launch(
        linear_kernel,
        p,
        x_ptr=x,
        w_ptr=w,
        bias_ptr=bias if bias is not None else y,
        y_ptr=y,
        M=M,
        N=N,
        K=K,
        stride_x=x.stride(0),
        stride_wk=wk,
        stride_wn=wn,
        HAS_BIAS=bias is not None,
        OPERAND=OPERANDS[weight.dtype],
        PRECISION=dot_precision(weight),
    )
    return y


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (R, I) @ w^T (w (G, I)) + bias (G,): a layer's input projection, in x's dtype."""
    return _linear(x, w, w.stride(1), w.stride(0), w.shape[0], bias, w)


def linear_backward(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, need_dx: bool, need_dw: bool) -> tuple:
    """Gradients of ``linear`` from dy (R, G): dx = dy @ w (R, I) in dy's dtype and
    dw = dy^T x (G, I) in w's dtype, each an empty tensor where not needed (the bias
    gradient, a plain sum over rows, is the caller's)."""
    dx = _linear(dy, w, w.stride(0), w.stride(1), w.shape[1], None, w) if need_dx else dy.new_empty(0)
    dw = weight_grad(dy, x, w).to(w.dtype) if need_dw else w.new_empty(0)
    return dx, dw
