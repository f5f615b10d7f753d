"""LSTM recurrence in Triton: the sequence kernels (forward, backward) and their launchers.

One program owns BLOCK_B batch rows and the whole hidden width, and runs every time step:
gates = x_proj[t] + h_{t-1} @ W_hh^T (fp32, K-chunked), the cell (``_lstm_cell``), and the
state update. h is double-buffered in an fp32 workspace so a step reads the whole previous
state while writing the new one; a barrier separates steps.
"""
import torch
import triton
import triton.language as tl

from ._common import (BLOCK_B, alloc, active_rows, copy_rows, matmul_rows, pow2_block, sigmoid, step_index,
                      tanh)


@triton.jit
def _lstm_cell(xi, xf, xg, xo, c_prev):
    """Pre-activations -> activated gates, c_t, m_t = o*tanh(c_t). The only copy of the math."""
    i = sigmoid(xi)
    f = sigmoid(xf)
    g = tanh(xg)
    o = sigmoid(xo)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def _lstm_cell_backward(i, f, g, o, c, c_prev, dm, dc):
    """dm: gradient reaching m_t; dc: reaching c_t from later steps.
    dc_t = dc + dm*o*(1-tanh(c)^2); returns d(pre-activations) and dc_{t-1} = dc_t*f."""
    tc = tanh(c)
    dct = dc + dm * o * (1.0 - tc * tc)
    return (dct * g * i * (1.0 - i), dct * c_prev * f * (1.0 - f), dct * i * (1.0 - g * g),
            dm * tc * o * (1.0 - o), dct * f)


@triton.jit
def _c_prev(cs_ptr, c0_ptr, s, prev, T, B, H, off, m2):
    """c_{t-1}: c0 at the first step processed (s == 0), else the carried c of step prev."""
    prev_ok = tl.minimum(tl.maximum(prev, 0), T - 1)
    from_cs = tl.load(cs_ptr + prev_ok * B * H + off, mask=m2, other=0.0)
    from_c0 = tl.load(c0_ptr + off, mask=m2, other=0.0).to(tl.float32)
    return tl.where(s > 0, from_cs, from_c0)


@triton.jit
def lstm_fwd_kernel(
    x_ptr, sxt, sxb,        # x_proj (T, B, 4H); strides of t and b, last dim contiguous
    w_ptr,                  # w_hh (4H, P) contiguous
    wr_ptr,                 # w_hr (P, H) contiguous, when HAS_PROJ
    h0_ptr, c0_ptr,         # (B, P), (B, H) contiguous
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,                  # out (T, B, P), input dtype
    gates_ptr, cs_ptr,      # out workspace (T, B, 4H) activated gates, (T, B, H) carried c; fp32
    hbuf_ptr,               # scratch (2, B, P) fp32: carried h, double-buffered
    mbuf_ptr,               # scratch (B, H) fp32: m_t before the projection, when HAS_PROJ
    T, B, H, P,
    REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rmask = rows < B
    copy_rows(hbuf_ptr, h0_ptr, rows, rmask, P, BP)
    tl.debug_barrier()
    for s in range(0, T):
        t = step_index(s, T, REVERSE)
        prev = step_index(s - 1, T, REVERSE)
        act = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)
        hcur = hbuf_ptr + (s % 2) * B * P
        hnxt = hbuf_ptr + ((s + 1) % 2) * B * P
        for j0 in range(0, H, BH):
            jj = j0 + tl.arange(0, BH)
            m2 = rmask[:, None] & (jj < H)[None, :]
            a2 = act[:, None] & (jj < H)[None, :]
            xrow = x_ptr + t * sxt + rows[:, None] * sxb + jj[None, :]
            acc_i = tl.load(xrow, mask=m2, other=0.0).to(tl.float32)
            acc_f = tl.load(xrow + H, mask=m2, other=0.0).to(tl.float32)
            acc_g = tl.load(xrow + 2 * H, mask=m2, other=0.0).to(tl.float32)
            acc_o = tl.load(xrow + 3 * H, mask=m2, other=0.0).to(tl.float32)
            # gate n of row-block: W_hh[n*H + j, k] -> W^T[k, j] at k*1 + j*P
            acc_i = matmul_rows(acc_i, hcur, P, rows, rmask, P, w_ptr, 1, P, jj, jj < H, BK, PRECISION)
            acc_f = matmul_rows(acc_f, hcur, P, rows, rmask, P, w_ptr + H * P, 1, P, jj, jj < H, BK, PRECISION)
            acc_g = matmul_rows(acc_g, hcur, P, rows, rmask, P, w_ptr + 2 * H * P, 1, P, jj, jj < H, BK, PRECISION)
            acc_o = matmul_rows(acc_o, hcur, P, rows, rmask, P, w_ptr + 3 * H * P, 1, P, jj, jj < H, BK, PRECISION)
            off = rows[:, None] * H + jj[None, :]
            c_prev = _c_prev(cs_ptr, c0_ptr, s, prev, T, B, H, off, m2)
            i, f, g, o, c, m = _lstm_cell(acc_i, acc_f, acc_g, acc_o, c_prev)
            gbase = gates_ptr + t * B * 4 * H + rows[:, None] * 4 * H + jj[None, :]
            tl.store(gbase, tl.where(a2, i, 0.0), mask=m2)
            tl.store(gbase + H, tl.where(a2, f, 0.0), mask=m2)
            tl.store(gbase + 2 * H, tl.where(a2, g, 0.0), mask=m2)
            tl.store(gbase + 3 * H, tl.where(a2, o, 0.0), mask=m2)
            tl.store(cs_ptr + t * B * H + off, tl.where(a2, c, c_prev), mask=m2)
            if HAS_PROJ:
                tl.store(mbuf_ptr + off, m, mask=m2)
            else:
                h_prev = tl.load(hcur + off, mask=m2, other=0.0)
                tl.store(hnxt + off, tl.where(a2, m, h_prev), mask=m2)
                tl.store(y_ptr + t * B * P + off, tl.where(a2, m, 0.0).to(y_ptr.dtype.element_ty), mask=m2)
        if HAS_PROJ:
            tl.debug_barrier()
            for p0 in range(0, P, BP):
                pp = p0 + tl.arange(0, BP)
                m2 = rmask[:, None] & (pp < P)[None, :]
                a2 = act[:, None] & (pp < P)[None, :]
                # h = m @ W_hr^T: W_hr[p, k] -> W^T[k, p] at k*1 + p*H
                acc = tl.zeros((BB, BP), tl.float32)
                acc = matmul_rows(acc, mbuf_ptr, H, rows, rmask, H, wr_ptr, 1, H, pp, pp < P, BK, PRECISION)
                off = rows[:, None] * P + pp[None, :]
                h_prev = tl.load(hcur + off, mask=m2, other=0.0)
                tl.store(hnxt + off, tl.where(a2, acc, h_prev), mask=m2)
                tl.store(y_ptr + t * B * P + off, tl.where(a2, acc, 0.0).to(y_ptr.dtype.element_ty), mask=m2)
        tl.debug_barrier()


@triton.jit
def lstm_bwd_kernel(
    dy_ptr,                 # (T, B, P) gradient of y, contiguous
    dhn_ptr, dcn_ptr,       # (B, P), (B, H) gradients of h_n, c_n
    w_ptr, wr_ptr,          # w_hh (4H, P), w_hr (P, H), contiguous
    c0_ptr,                 # (B, H)
    gates_ptr, cs_ptr,      # forward workspace, fp32
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    dg_ptr,                 # out (T, B, 4H) fp32: dgates = d x_proj
    dhout_ptr,              # out (T, B, P) fp32: gradient reaching h_t at active steps (HAS_PROJ)
    dhbuf_ptr, dcbuf_ptr,   # scratch (2, B, P), (2, B, H) fp32, double-buffered dh, dc
    dtbuf_ptr,              # scratch (B, P) fp32: dh + dy[t] of the current step
    T, B, H, P,
    REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rmask = rows < B
    copy_rows(dhbuf_ptr, dhn_ptr, rows, rmask, P, BP)
    copy_rows(dcbuf_ptr, dcn_ptr, rows, rmask, H, BH)
    tl.debug_barrier()
    for s in range(0, T):
        fs = T - 1 - s  # the forward step being undone
        t = step_index(fs, T, REVERSE)
        prev = step_index(fs - 1, T, REVERSE)
        act = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)
        dhcur = dhbuf_ptr + (s % 2) * B * P
        dhnxt = dhbuf_ptr + ((s + 1) % 2) * B * P
        dccur = dcbuf_ptr + (s % 2) * B * H
        dcnxt = dcbuf_ptr + ((s + 1) % 2) * B * H
        for p0 in range(0, P, BP):
            pp = p0 + tl.arange(0, BP)
            m2 = rmask[:, None] & (pp < P)[None, :]
            off = rows[:, None] * P + pp[None, :]
            dt = tl.load(dhcur + off, mask=m2, other=0.0) + tl.load(dy_ptr + t * B * P + off, mask=m2, other=0.0).to(tl.float32)
            tl.store(dtbuf_ptr + off, dt, mask=m2)
            if HAS_PROJ:
                tl.store(dhout_ptr + t * B * P + off, tl.where(act[:, None], dt, 0.0), mask=m2)
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            jj = j0 + tl.arange(0, BH)
            m2 = rmask[:, None] & (jj < H)[None, :]
            a2 = act[:, None] & (jj < H)[None, :]
            off = rows[:, None] * H + jj[None, :]
            if HAS_PROJ:
                # dm = dt @ W_hr: W_hr[p, j] at p*H + j
                dm = tl.zeros((BB, BH), tl.float32)
                dm = matmul_rows(dm, dtbuf_ptr, P, rows, rmask, P, wr_ptr, H, 1, jj, jj < H, BK, PRECISION)
            else:
                dm = tl.load(dtbuf_ptr + off, mask=m2, other=0.0)
            gbase = gates_ptr + t * B * 4 * H + rows[:, None] * 4 * H + jj[None, :]
            i = tl.load(gbase, mask=m2, other=0.0)
            f = tl.load(gbase + H, mask=m2, other=0.0)
            g = tl.load(gbase + 2 * H, mask=m2, other=0.0)
            o = tl.load(gbase + 3 * H, mask=m2, other=0.0)
            c = tl.load(cs_ptr + t * B * H + off, mask=m2, other=0.0)
            c_prev = _c_prev(cs_ptr, c0_ptr, fs, prev, T, B, H, off, m2)
            dc = tl.load(dccur + off, mask=m2, other=0.0)
            di, df, dg, do, dc_prev = _lstm_cell_backward(i, f, g, o, c, c_prev, dm, dc)
            dbase = dg_ptr + t * B * 4 * H + rows[:, None] * 4 * H + jj[None, :]
            tl.store(dbase, tl.where(a2, di, 0.0), mask=m2)
            tl.store(dbase + H, tl.where(a2, df, 0.0), mask=m2)
            tl.store(dbase + 2 * H, tl.where(a2, dg, 0.0), mask=m2)
            tl.store(dbase + 3 * H, tl.where(a2, do, 0.0), mask=m2)
            tl.store(dcnxt + off, tl.where(a2, dc_prev, dc), mask=m2)
        tl.debug_barrier()
        for p0 in range(0, P, BP):
            pp = p0 + tl.arange(0, BP)
            m2 = rmask[:, None] & (pp < P)[None, :]
            off = rows[:, None] * P + pp[None, :]
            # dh_{t-1} = dgates @ W_hh: W_hh[k, p] at k*P + p
            acc = tl.zeros((BB, BP), tl.float32)
            acc = matmul_rows(acc, dg_ptr + t * B * 4 * H, 4 * H, rows, rmask, 4 * H, w_ptr, P, 1, pp, pp < P,
                              BK, PRECISION)
            dh_old = tl.load(dhcur + off, mask=m2, other=0.0)
            tl.store(dhnxt + off, tl.where(act[:, None], acc, dh_old), mask=m2)
        tl.debug_barrier()


def _blocks(H, P):
    return dict(BB=BLOCK_B, BH=pow2_block(H), BP=pow2_block(P), BK=32)


def forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, precision):
    T, B, G = x_proj.shape
    H, P = G // 4, w_hh.shape[1]
    if x_proj.stride(2) != 1:
        x_proj = x_proj.contiguous()
    dev, f32 = x_proj.device, torch.float32
    y = alloc(T, B, P, device=dev, dtype=x_proj.dtype)
    gates = alloc(T, B, G, device=dev, dtype=f32)
    cs = alloc(T, B, H, device=dev, dtype=f32)
    hbuf = alloc(2, B, P, device=dev, dtype=f32)
    mbuf = alloc(B, H, device=dev, dtype=f32) if w_hr is not None else hbuf
    w_hh = w_hh.contiguous()
    w_hr_c = w_hr.contiguous() if w_hr is not None else w_hh
    if B > 0:
        lstm_fwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            x_proj, x_proj.stride(0), x_proj.stride(1), w_hh, w_hr_c, h0.contiguous(), c0.contiguous(),
            lengths if lengths is not None else hbuf, y, gates, cs, hbuf, mbuf, T, B, H, P,
            REVERSE=reverse, HAS_PROJ=w_hr is not None, HAS_LENGTHS=lengths is not None,
            PRECISION=precision, **_blocks(H, P))
    last = 0 if reverse else T - 1
    h_n = hbuf[T % 2].to(x_proj.dtype)
    return y, h_n, cs[last].to(x_proj.dtype, copy=True), gates, cs  # c_n must not alias cs


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse, precision, h_prev_of):
    T, B, G = gates.shape
    H, P = G // 4, w_hh.shape[1]
    dev, f32, dtype = dy.device, torch.float32, dy.dtype
    dg = alloc(T, B, G, device=dev, dtype=f32)
    dhout = alloc(T, B, P, device=dev, dtype=f32) if w_hr is not None else dg
    dhbuf = alloc(2, B, P, device=dev, dtype=f32)
    dcbuf = alloc(2, B, H, device=dev, dtype=f32)
    dtbuf = alloc(B, P, device=dev, dtype=f32)
    w_hh = w_hh.contiguous()
    w_hr_c = w_hr.contiguous() if w_hr is not None else w_hh
    if B > 0:
        lstm_bwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), w_hh, w_hr_c, c0.contiguous(), gates, cs,
            lengths if lengths is not None else dg, dg, dhout, dhbuf, dcbuf, dtbuf, T, B, H, P,
            REVERSE=reverse, HAS_PROJ=w_hr is not None, HAS_LENGTHS=lengths is not None,
            PRECISION=precision, **_blocks(H, P))
    hp = h_prev_of(y, h0, lengths, reverse).to(f32)
    dw_hh = (dg.reshape(T * B, G).t() @ hp.reshape(T * B, P)).to(dtype)
    dw_hr = None
    if w_hr is not None:
        pre = gates[..., 3 * H:] * torch.tanh(cs)
        dw_hr = (dhout.reshape(T * B, P).t() @ pre.reshape(T * B, H)).to(dtype)
    return dg.to(dtype), dw_hh, dw_hr, dhbuf[T % 2].to(dtype), dcbuf[T % 2].to(dtype)
