"""Elman RNN (tanh / relu) recurrence in Triton; same structure as lstm.py."""
import torch
import triton
import triton.language as tl

from ._common import BLOCK_B, alloc, active_rows, copy_rows, matmul_rows, pow2_block, step_index, tanh


@triton.jit
def _rnn_cell(a, RELU: tl.constexpr):
    if RELU:
        h = tl.maximum(a, 0.0)
    else:
        h = tanh(a)
    return h


@triton.jit
def _rnn_cell_backward(h, dh, RELU: tl.constexpr):
    """act'(a) from the output h: [h > 0] for relu, 1 - h^2 for tanh."""
    if RELU:
        da = tl.where(h > 0.0, dh, 0.0)
    else:
        da = dh * (1.0 - h * h)
    return da


@triton.jit
def rnn_fwd_kernel(
    x_ptr, sxt, sxb,        # x_proj (T, B, H); strides of t and b, last dim contiguous
    w_ptr,                  # w_hh (H, H) contiguous
    h0_ptr, len_ptr,        # (B, H); lengths (B,) int64 when HAS_LENGTHS
    y_ptr,                  # out (T, B, H), input dtype
    hbuf_ptr,               # scratch (2, B, H) fp32
    T, B, H,
    REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rmask = rows < B
    copy_rows(hbuf_ptr, h0_ptr, rows, rmask, H, BH)
    tl.debug_barrier()
    for s in range(0, T):
        t = step_index(s, T, REVERSE)
        act = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)
        hcur = hbuf_ptr + (s % 2) * B * H
        hnxt = hbuf_ptr + ((s + 1) % 2) * B * H
        for j0 in range(0, H, BH):
            jj = j0 + tl.arange(0, BH)
            m2 = rmask[:, None] & (jj < H)[None, :]
            a2 = act[:, None] & (jj < H)[None, :]
            off = rows[:, None] * H + jj[None, :]
            acc = tl.load(x_ptr + t * sxt + rows[:, None] * sxb + jj[None, :], mask=m2, other=0.0).to(tl.float32)
            acc = matmul_rows(acc, hcur, H, rows, rmask, H, w_ptr, 1, H, jj, jj < H, BK, PRECISION)
            h = _rnn_cell(acc, RELU)
            h_prev = tl.load(hcur + off, mask=m2, other=0.0)
            tl.store(hnxt + off, tl.where(a2, h, h_prev), mask=m2)
            tl.store(y_ptr + t * B * H + off, tl.where(a2, h, 0.0).to(y_ptr.dtype.element_ty), mask=m2)
        tl.debug_barrier()


@triton.jit
def rnn_bwd_kernel(
    dy_ptr, dhn_ptr,        # (T, B, H), (B, H)
    w_ptr,                  # w_hh (H, H) contiguous
    y_ptr,                  # (T, B, H): the forward's outputs h_t
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    da_ptr,                 # out (T, B, H) fp32: d x_proj
    dhbuf_ptr,              # scratch (2, B, H) fp32
    T, B, H,
    REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rmask = rows < B
    copy_rows(dhbuf_ptr, dhn_ptr, rows, rmask, H, BH)
    tl.debug_barrier()
    for s in range(0, T):
        t = step_index(T - 1 - s, T, REVERSE)
        act = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)
        dhcur = dhbuf_ptr + (s % 2) * B * H
        dhnxt = dhbuf_ptr + ((s + 1) % 2) * B * H
        for j0 in range(0, H, BH):
            jj = j0 + tl.arange(0, BH)
            m2 = rmask[:, None] & (jj < H)[None, :]
            off = rows[:, None] * H + jj[None, :]
            dh = tl.load(dhcur + off, mask=m2, other=0.0) + tl.load(dy_ptr + t * B * H + off, mask=m2, other=0.0).to(tl.float32)
            h = tl.load(y_ptr + t * B * H + off, mask=m2, other=0.0).to(tl.float32)
            da = _rnn_cell_backward(h, dh, RELU)
            tl.store(da_ptr + t * B * H + off, tl.where(act[:, None], da, 0.0), mask=m2)
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            jj = j0 + tl.arange(0, BH)
            m2 = rmask[:, None] & (jj < H)[None, :]
            off = rows[:, None] * H + jj[None, :]
            # dh_{t-1} = da @ W_hh: W_hh[k, j] at k*H + j
            acc = tl.zeros((BB, BH), tl.float32)
            acc = matmul_rows(acc, da_ptr + t * B * H, H, rows, rmask, H, w_ptr, H, 1, jj, jj < H, BK, PRECISION)
            dh_old = tl.load(dhcur + off, mask=m2, other=0.0)
            tl.store(dhnxt + off, tl.where(act[:, None], acc, dh_old), mask=m2)
        tl.debug_barrier()


def _blocks(H):
    return dict(BB=BLOCK_B, BH=pow2_block(H), BK=32)


def forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity, precision):
    T, B, H = x_proj.shape
    if x_proj.stride(2) != 1:
        x_proj = x_proj.contiguous()
    dev, f32 = x_proj.device, torch.float32
    y = alloc(T, B, H, device=dev, dtype=x_proj.dtype)
    hbuf = alloc(2, B, H, device=dev, dtype=f32)
    if B > 0:
        rnn_fwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            x_proj, x_proj.stride(0), x_proj.stride(1), w_hh.contiguous(), h0.contiguous(),
            lengths if lengths is not None else hbuf, y, hbuf, T, B, H,
            REVERSE=reverse, RELU=nonlinearity == "relu", HAS_LENGTHS=lengths is not None,
            PRECISION=precision, **_blocks(H))
    return y, hbuf[T % 2].to(x_proj.dtype)


def backward(dy, dh_n, w_hh, h0, y, lengths, reverse, nonlinearity, precision, h_prev_of):
    T, B, H = y.shape
    dev, f32, dtype = dy.device, torch.float32, dy.dtype
    da = alloc(T, B, H, device=dev, dtype=f32)
    dhbuf = alloc(2, B, H, device=dev, dtype=f32)
    if B > 0:
        rnn_bwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            dy.contiguous(), dh_n.contiguous(), w_hh.contiguous(), y.contiguous(),
            lengths if lengths is not None else da, da, dhbuf, T, B, H,
            REVERSE=reverse, RELU=nonlinearity == "relu", HAS_LENGTHS=lengths is not None,
            PRECISION=precision, **_blocks(H))
    hp = h_prev_of(y, h0, lengths, reverse).to(f32)
    dw_hh = (da.reshape(T * B, H).t() @ hp.reshape(T * B, H)).to(dtype)
    return da.to(dtype), dw_hh, dhbuf[T % 2].to(dtype)
