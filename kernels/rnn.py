"""Elman RNN (tanh / relu) recurrence in Triton: the sequence and step shapes of lstm.py
(no persistent kernels: a single W_hh tile fits the sequence kernel up to H=128).

Backward of one step (h_t = act(a_t), a_t = x_proj[t] + h_{t-1} @ W_hh^T):
    da = dh * act'(a_t)  (1 - h_t^2 for tanh, [h_t > 0] for relu),  dh_{t-1} = da @ W_hh
"""

import torch
import triton
import triton.language as tl

from ._common import (
    active_rows,
    alloc,
    gate_tile,
    gate_tile_t,
    kernel_input,
    load_rows,
    matmul_rows,
    mm,
    program_tile,
    store_rows,
    tanh,
    time_index,
)
from .graphs import step_graphs
from .launch import carry_dh, launch, plan, run


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
def rnn_fwd_seq_kernel(
    x_ptr,
    sxt,
    sxb,  # x_proj (T, B, H); strides of t and b, last dim contiguous
    w_ptr,  # w_hh (H, H) contiguous
    h0_ptr,
    len_ptr,  # (B, H); lengths (B,) int64 when HAS_LENGTHS
    y_ptr,  # out (T, B, H), input dtype
    hn_ptr,  # out (B, H) fp32: final state
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    RELU: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    w = gate_tile_t(w_ptr, 0, 0, H, H, BH, BH)  # [k, j] = W_hh[j, k], on chip for all T steps
    h = load_rows(h0_ptr, H, rows, rmask, jj, H)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        h_new = _rnn_cell(load_rows(x_ptr + t * sxt, sxb, rows, rmask, jj, H) + mm(h, w, PRECISION), RELU)
        h = tl.where(a2, h_new, h)
        store_rows(y_ptr + t * B * H, H, rows, rmask, jj, H, tl.where(a2, h_new, 0.0))
    store_rows(hn_ptr, H, rows, rmask, jj, H, h)


@triton.jit
def rnn_bwd_seq_kernel(
    dy_ptr,
    dhn_ptr,  # (T, B, H), (B, H)
    w_ptr,  # w_hh (H, H) contiguous
    y_ptr,  # (T, B, H): the forward's outputs h_t
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    da_ptr,  # out (T, B, H) fp32: d x_proj
    dh0_ptr,  # out (B, H) fp32
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    RELU: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    w = gate_tile(w_ptr, 0, 0, H, H, BH, BH)  # [j, k] = W_hh[j, k]
    dh = load_rows(dhn_ptr, H, rows, rmask, jj, H)
    for s in range(T):
        t = time_index(T - 1 - s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        da = _rnn_cell_backward(
            load_rows(y_ptr + t * B * H, H, rows, rmask, jj, H),
            dh + load_rows(dy_ptr + t * B * H, H, rows, rmask, jj, H),
            RELU,
        )
        da = tl.where(a2, da, 0.0)
        store_rows(da_ptr + t * B * H, H, rows, rmask, jj, H, da)
        dh = tl.where(a2, mm(da, w, PRECISION), dh)
    store_rows(dh0_ptr, H, rows, rmask, jj, H, dh)


@triton.jit(do_not_specialize=["t"])
def rnn_fwd_step_kernel(
    x_ptr,
    sxb,  # x_proj[t] (B, H), row stride sxb
    w_ptr,  # w_hh (H, H) contiguous
    hprev_ptr,
    len_ptr,
    t,  # h_{t-1} (B, H) fp32; lengths; the time index
    hnxt_ptr,
    y_ptr,  # out h_t (B, H) fp32, y[t] (B, H)
    B,
    H,
    RELU: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    acc = matmul_rows(
        load_rows(x_ptr, sxb, rows, rmask, jj, H), hprev_ptr, H, rows, rmask, H, w_ptr, 1, H, jj, jj < H, BK, PRECISION
    )
    h = _rnn_cell(acc, RELU)
    store_rows(hnxt_ptr, H, rows, rmask, jj, H, tl.where(a2, h, load_rows(hprev_ptr, H, rows, rmask, jj, H)))
    store_rows(y_ptr, H, rows, rmask, jj, H, tl.where(a2, h, 0.0))


@triton.jit(do_not_specialize=["t", "t_after"])
def rnn_bwd_step_kernel(
    dh_ptr,
    dy_ptr,
    y_ptr,  # carried dh (B, H) fp32; dy[t], y[t] (B, H)
    len_ptr,
    t,
    da_ptr,  # out da[t] (B, H) fp32
    daa_ptr,  # da of the step after t (B, H) fp32, when CARRY
    w_ptr,  # w_hh (H, H) contiguous, when CARRY
    t_after,  # that step's time index, when CARRY
    B,
    H,
    RELU: tl.constexpr,
    CARRY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    dh = load_rows(dh_ptr, H, rows, rmask, jj, H)
    if CARRY:
        # carry_dh of the step after t, fused: rows active there take da_after @ W_hh on this
        # program's units, the others keep the gradient they carry (same sum, same order)
        acc = matmul_rows(
            tl.zeros((BB, BH), tl.float32), daa_ptr, H, rows, rmask, H, w_ptr, H, 1, jj, jj < H, BK, PRECISION
        )
        dh = tl.where(active_rows(t_after, rows, rmask, len_ptr, HAS_LENGTHS)[:, None], acc, dh)
        store_rows(dh_ptr, H, rows, rmask, jj, H, dh)
    da = _rnn_cell_backward(
        load_rows(y_ptr, H, rows, rmask, jj, H), dh + load_rows(dy_ptr, H, rows, rmask, jj, H), RELU
    )
    store_rows(da_ptr, H, rows, rmask, jj, H, tl.where(a2, da, 0.0))


# ---------------------------------------------------------------------------------------
# Launchers: which tensors each kernel takes; the shape, grids and blocks come from launch.py
# ---------------------------------------------------------------------------------------
@step_graphs
def forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity, precision):
    """-> y (T, B, H), h_n (B, H) in the input dtype."""
    T, B, H = x_proj.shape
    x_proj = kernel_input(x_proj)
    dev, f32, dtype = x_proj.device, torch.float32, x_proj.dtype
    y = alloc(T, B, H, device=dev, dtype=dtype)
    if B == 0 or T == 0:
        return y, h0.clone()
    w_hh = w_hh.contiguous()
    lens = lengths if lengths is not None else y
    flags = dict(RELU=nonlinearity == "relu", HAS_LENGTHS=lengths is not None, PRECISION=precision)
    p = plan(1, H, H, False, w_hh.element_size(), B, dev, has_persistent=False, row=x_proj.stride(1))
    # h_{t-1} and h_t of the step kernels ([0] starts as h0); h_n = hbuf[T % 2]
    hbuf = alloc(2, B, H, device=dev, dtype=f32)
    hbuf[0].copy_(h0)

    def sequence():
        launch(
            rnn_fwd_seq_kernel,
            p,
            x_ptr=x_proj,
            sxt=x_proj.stride(0),
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            h0_ptr=h0.contiguous(),
            len_ptr=lens,
            y_ptr=y,
            hn_ptr=hbuf[T % 2],
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
        )

    def step(s, t, prev):
        launch(
            rnn_fwd_step_kernel,
            p,
            "H",
            x_ptr=x_proj[t],
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            hprev_ptr=hbuf[s % 2],
            len_ptr=lens,
            t=t,
            hnxt_ptr=hbuf[(s + 1) % 2],
            y_ptr=y[t],
            B=B,
            H=H,
            **flags,
        )

    run(p, T, reverse, backward=False, sequence=sequence, step=step)
    return y, hbuf[T % 2].to(dtype)


@step_graphs
def backward(dy, dh_n, w_hh, y, lengths, reverse, nonlinearity, precision):
    """-> dx_proj (T, B, H), dh0 (B, H), fp32. y: the forward's outputs (act' is taken from them)."""
    T, B, H = y.shape
    dev, f32 = dy.device, torch.float32
    da = alloc(T, B, H, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return da, dh_n.to(f32, copy=True)
    dy, dh_n, w_hh, y = dy.contiguous(), dh_n.contiguous(), w_hh.contiguous(), y.contiguous()
    lens = lengths if lengths is not None else da
    flags = dict(RELU=nonlinearity == "relu", HAS_LENGTHS=lengths is not None)
    p = plan(1, H, H, False, w_hh.element_size(), B, dev, has_persistent=False)
    dh = alloc(B, H, device=dev, dtype=f32)

    def sequence():
        launch(
            rnn_bwd_seq_kernel,
            p,
            dy_ptr=dy,
            dhn_ptr=dh_n,
            w_ptr=w_hh,
            y_ptr=y,
            len_ptr=lens,
            da_ptr=da,
            dh0_ptr=dh,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            PRECISION=precision,
            **flags,
        )

    after = []  # the time index of the step undone last: its carry is fused into the next launch

    def step(s, t, prev):
        if s == T - 1:  # the first step undone: the step kernels carry dh in place from dh_n
            dh.copy_(dh_n)
        fuse = bool(after)
        launch(
            rnn_bwd_step_kernel,
            p,
            "H",
            dh_ptr=dh,
            dy_ptr=dy[t],
            y_ptr=y[t],
            len_ptr=lens,
            t=t,
            da_ptr=da[t],
            daa_ptr=da[after[0]] if fuse else da[t],
            w_ptr=w_hh,
            t_after=after[0] if fuse else t,
            B=B,
            H=H,
            CARRY=fuse,
            PRECISION=precision,
            **flags,
        )
        if s == 0:  # dh0 after the last step undone
            carry_dh(p, da[t], w_hh, dh, None, lens, lengths is not None, t, precision)
        after[:] = [t]

    run(p, T, reverse, backward=True, sequence=sequence, step=step)
    return da, dh
