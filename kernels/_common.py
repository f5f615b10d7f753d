"""Helpers shared by the cell modules: activations, the row-block matmul, block sizes."""
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


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # tanh through sigmoid: one exp, available on every Triton version and in the interpreter
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def matmul_rows(acc, a_ptr, stride_a, rows, row_mask, K, w_ptr, stride_wk, stride_wn, cols, col_mask,
                BK: tl.constexpr, PRECISION: tl.constexpr):
    """acc (BB, BN) += A[rows, 0:K] @ W[0:K, cols], with W[k, n] at w_ptr + k*stride_wk + n*stride_wn.

    A and W are read in K-chunks of BK and multiplied in fp32 (IEEE or TF32, per PRECISION).
    """
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < K
        a = tl.load(a_ptr + rows[:, None] * stride_a + kk[None, :], mask=row_mask[:, None] & km[None, :], other=0.0)
        w = tl.load(w_ptr + kk[:, None] * stride_wk + cols[None, :] * stride_wn,
                    mask=km[:, None] & col_mask[None, :], other=0.0)
        acc += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision=PRECISION)
    return acc


@triton.jit
def step_index(s, T, REVERSE: tl.constexpr):
    """Time index of the s-th step processed in forward order."""
    if REVERSE:
        t = T - 1 - s
    else:
        t = s
    return t


@triton.jit
def active_rows(t, rows, row_mask, len_ptr, HAS_LENGTHS: tl.constexpr):
    """(BB,) bool: rows whose sequence is still running at step t (t < lengths[b])."""
    if HAS_LENGTHS:
        lens = tl.load(len_ptr + rows, mask=row_mask, other=0)
        act = row_mask & (t < lens)
    else:
        act = row_mask
    return act


@triton.jit
def copy_rows(dst_ptr, src_ptr, rows, row_mask, N, BN: tl.constexpr):
    """dst[rows, 0:N] = src[rows, 0:N] as fp32 (both row-major with row length N)."""
    for n0 in range(0, N, BN):
        nn = n0 + tl.arange(0, BN)
        m = row_mask[:, None] & (nn < N)[None, :]
        v = tl.load(src_ptr + rows[:, None] * N + nn[None, :], mask=m, other=0.0)
        tl.store(dst_ptr + rows[:, None] * N + nn[None, :], v.to(tl.float32), mask=m)


def pow2_block(n: int, lo: int = 16, hi: int = 64) -> int:
    """A power-of-two tile edge for n, within [lo, hi] (tl.dot needs edges >= 16 on GPUs)."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


BLOCK_B = 16  # batch rows per program: the smallest M a tensor-core dot accepts
