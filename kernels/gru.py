"""GRU recurrence in Triton (torch.nn's GRU: b_hn inside the reset product).

Same structure as lstm.py: one program per BLOCK_B batch rows over the whole hidden width
and all time steps; h double-buffered in fp32; a barrier between steps.
"""
import torch
import triton
import triton.language as tl

from ._common import BLOCK_B, alloc, active_rows, copy_rows, matmul_rows, pow2_block, sigmoid, step_index, tanh


@triton.jit
def _gru_cell(xr, xz, xn, ghr, ghz, ghn, b_hn, h_prev):
    """x*: x_proj parts, gh*: h_prev @ W_hh^T parts. Returns r, z, n, hn, h_t."""
    r = sigmoid(xr + ghr)
    z = sigmoid(xz + ghz)
    hn = ghn + b_hn
    n = tanh(xn + r * hn)
    return r, z, n, hn, (1.0 - z) * n + z * h_prev


@triton.jit
def _gru_cell_backward(r, z, n, hn, h_prev, dh):
    """Returns dx parts (dar, daz, dan), the n-part of d(h @ W_hh^T) (dan*r), and dh*z."""
    dan = dh * (1.0 - z) * (1.0 - n * n)
    dar = dan * hn * r * (1.0 - r)
    daz = dh * (h_prev - n) * z * (1.0 - z)
    return dar, daz, dan, dan * r, dh * z


@triton.jit
def gru_fwd_kernel(
    x_ptr, sxt, sxb,        # x_proj (T, B, 3H); strides of t and b, last dim contiguous
    w_ptr,                  # w_hh (3H, H) contiguous
    bhn_ptr,                # b_hn (H,), when HAS_BHN
    h0_ptr,                 # (B, H)
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,                  # out (T, B, H), input dtype
    acts_ptr,               # out workspace (T, B, 4H) fp32: r, z, n, hn
    hbuf_ptr,               # scratch (2, B, H) fp32
    T, B, H,
    REVERSE: tl.constexpr, HAS_BHN: tl.constexpr, HAS_LENGTHS: tl.constexpr,
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
            jm = jj < H
            m2 = rmask[:, None] & jm[None, :]
            a2 = act[:, None] & jm[None, :]
            xrow = x_ptr + t * sxt + rows[:, None] * sxb + jj[None, :]
            zero = tl.zeros((BB, BH), tl.float32)
            ghr = matmul_rows(zero, hcur, H, rows, rmask, H, w_ptr, 1, H, jj, jm, BK, PRECISION)
            ghz = matmul_rows(zero, hcur, H, rows, rmask, H, w_ptr + H * H, 1, H, jj, jm, BK, PRECISION)
            ghn = matmul_rows(zero, hcur, H, rows, rmask, H, w_ptr + 2 * H * H, 1, H, jj, jm, BK, PRECISION)
            if HAS_BHN:
                b_hn = tl.load(bhn_ptr + jj, mask=jm, other=0.0).to(tl.float32)[None, :]
            else:
                b_hn = tl.zeros((1, BH), tl.float32)
            off = rows[:, None] * H + jj[None, :]
            h_prev = tl.load(hcur + off, mask=m2, other=0.0)
            r, z, n, hn, h = _gru_cell(tl.load(xrow, mask=m2, other=0.0).to(tl.float32),
                                       tl.load(xrow + H, mask=m2, other=0.0).to(tl.float32),
                                       tl.load(xrow + 2 * H, mask=m2, other=0.0).to(tl.float32),
                                       ghr, ghz, ghn, b_hn, h_prev)
            abase = acts_ptr + t * B * 4 * H + rows[:, None] * 4 * H + jj[None, :]
            tl.store(abase, tl.where(a2, r, 0.0), mask=m2)
            tl.store(abase + H, tl.where(a2, z, 0.0), mask=m2)
            tl.store(abase + 2 * H, tl.where(a2, n, 0.0), mask=m2)
            tl.store(abase + 3 * H, tl.where(a2, hn, 0.0), mask=m2)
            tl.store(hnxt + off, tl.where(a2, h, h_prev), mask=m2)
            tl.store(y_ptr + t * B * H + off, tl.where(a2, h, 0.0).to(y_ptr.dtype.element_ty), mask=m2)
        tl.debug_barrier()


@triton.jit
def gru_bwd_kernel(
    dy_ptr, dhn_ptr,        # (T, B, H), (B, H)
    w_ptr,                  # w_hh (3H, H) contiguous
    acts_ptr,               # forward workspace (T, B, 4H) fp32
    hprev_ptr,              # (T, B, H) fp32: the state each step started from
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    dx_ptr, dgh_ptr,        # out (T, B, 3H) fp32: d x_proj, d(h_prev @ W_hh^T)
    dhbuf_ptr,              # scratch (2, B, H) fp32
    dd_ptr,                 # scratch (B, H) fp32: dh*z of the current step
    T, B, H,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
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
            a2 = act[:, None] & (jj < H)[None, :]
            off = rows[:, None] * H + jj[None, :]
            dh = tl.load(dhcur + off, mask=m2, other=0.0) + tl.load(dy_ptr + t * B * H + off, mask=m2, other=0.0).to(tl.float32)
            abase = acts_ptr + t * B * 4 * H + rows[:, None] * 4 * H + jj[None, :]
            dar, daz, dan, dhn, dd = _gru_cell_backward(
                tl.load(abase, mask=m2, other=0.0), tl.load(abase + H, mask=m2, other=0.0),
                tl.load(abase + 2 * H, mask=m2, other=0.0), tl.load(abase + 3 * H, mask=m2, other=0.0),
                tl.load(hprev_ptr + t * B * H + off, mask=m2, other=0.0), dh)
            xb = dx_ptr + t * B * 3 * H + rows[:, None] * 3 * H + jj[None, :]
            gb = dgh_ptr + t * B * 3 * H + rows[:, None] * 3 * H + jj[None, :]
            tl.store(xb, tl.where(a2, dar, 0.0), mask=m2)
            tl.store(xb + H, tl.where(a2, daz, 0.0), mask=m2)
            tl.store(xb + 2 * H, tl.where(a2, dan, 0.0), mask=m2)
            tl.store(gb, tl.where(a2, dar, 0.0), mask=m2)
            tl.store(gb + H, tl.where(a2, daz, 0.0), mask=m2)
            tl.store(gb + 2 * H, tl.where(a2, dhn, 0.0), mask=m2)
            tl.store(dd_ptr + off, dd, mask=m2)
        tl.debug_barrier()
        for j0 in range(0, H, BH):
            jj = j0 + tl.arange(0, BH)
            m2 = rmask[:, None] & (jj < H)[None, :]
            off = rows[:, None] * H + jj[None, :]
            # dh_{t-1} = dh*z + dgh @ W_hh: W_hh[k, j] at k*H + j
            acc = tl.load(dd_ptr + off, mask=m2, other=0.0)
            acc = matmul_rows(acc, dgh_ptr + t * B * 3 * H, 3 * H, rows, rmask, 3 * H, w_ptr, H, 1, jj, jj < H,
                              BK, PRECISION)
            dh_old = tl.load(dhcur + off, mask=m2, other=0.0)
            tl.store(dhnxt + off, tl.where(act[:, None], acc, dh_old), mask=m2)
        tl.debug_barrier()


def _blocks(H):
    return dict(BB=BLOCK_B, BH=pow2_block(H), BK=32)


def forward(x_proj, w_hh, b_hn, h0, lengths, reverse, precision):
    T, B, G = x_proj.shape
    H = G // 3
    if x_proj.stride(2) != 1:
        x_proj = x_proj.contiguous()
    dev, f32 = x_proj.device, torch.float32
    y = alloc(T, B, H, device=dev, dtype=x_proj.dtype)
    acts = alloc(T, B, 4 * H, device=dev, dtype=f32)
    hbuf = alloc(2, B, H, device=dev, dtype=f32)
    if B > 0:
        gru_fwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            x_proj, x_proj.stride(0), x_proj.stride(1), w_hh.contiguous(),
            b_hn.contiguous() if b_hn is not None else hbuf, h0.contiguous(),
            lengths if lengths is not None else hbuf, y, acts, hbuf, T, B, H,
            REVERSE=reverse, HAS_BHN=b_hn is not None, HAS_LENGTHS=lengths is not None,
            PRECISION=precision, **_blocks(H))
    return y, hbuf[T % 2].to(x_proj.dtype), acts


def backward(dy, dh_n, w_hh, b_hn, h0, y, acts, lengths, reverse, precision, h_prev_of):
    T, B, H4 = acts.shape
    H = H4 // 4
    dev, f32, dtype = dy.device, torch.float32, dy.dtype
    hp = h_prev_of(y, h0, lengths, reverse).to(f32).contiguous()
    dx = alloc(T, B, 3 * H, device=dev, dtype=f32)
    dgh = alloc(T, B, 3 * H, device=dev, dtype=f32)
    dhbuf = alloc(2, B, H, device=dev, dtype=f32)
    dd = alloc(B, H, device=dev, dtype=f32)
    if B > 0:
        gru_bwd_kernel[(triton.cdiv(B, BLOCK_B),)](
            dy.contiguous(), dh_n.contiguous(), w_hh.contiguous(), acts, hp,
            lengths if lengths is not None else dx, dx, dgh, dhbuf, dd, T, B, H,
            REVERSE=reverse, HAS_LENGTHS=lengths is not None, PRECISION=precision, **_blocks(H))
    dw_hh = (dgh.reshape(T * B, 3 * H).t() @ hp.reshape(T * B, H)).to(dtype)
    db_hn = dgh[..., 2 * H:].sum((0, 1)).to(dtype) if b_hn is not None else None
    return dx.to(dtype), dw_hh, db_hn, dhbuf[T % 2].to(dtype)
