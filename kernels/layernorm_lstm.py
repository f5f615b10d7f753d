"""LayerNormLSTM recurrence in Triton (fastrnn.cells.LAYERNORM_LSTM): LayerNorm on the
recurrent product (over the 4H gate vector) and on the new cell state (over H).

Both norms take statistics over whole rows, so every kernel that applies them owns batch
rows and the whole width:

* Sequence kernel (one launch): a program owns BLOCK_B batch rows, keeps the four W_hh
  gate tiles, h and c on chip for all T steps; chosen by the LSTM's fit rule
  (``kernel_shape`` with four H x H tiles).
* Step kernels (larger H): per step, r = h_{t-1} @ W_hh^T into a (B, 4H) fp32 buffer over
  batch x hidden tiles, then a row kernel (programs over batch rows, each holding whole 4H
  rows) for LN_hh, the gates, LN_c and the state update. Backward: the row kernel writes
  da (= dx_proj), dr into a (B, 4H) scratch and dc_{t-1}; the shared ``carry_dh`` step
  gives dh_{t-1} = dr @ W_hh.

No persistent kernels: a hidden tile of a persistent program would need the whole row's
statistics from the other programs, one more grid barrier per step.

Forward of one step (LN(v) = (v - mean v) * rstd, rstd = 1/sqrt(var v + eps), biased var):
    r = h_{t-1} @ W_hh^T;  rhat = LN(r);  a = x_proj_t + rhat*w_r + b_r;  i, f, o = sig(a), g = tanh(a)
    s = f*c_{t-1} + i*g;  shat = LN(s);  c_t = shat*w_c + b_c;  h_t = o*tanh(c_t)
Backward of one step (means over the normalised row: H for s, 4H for r):
    dc_t = dc + dh*o*(1 - tanh(c_t)^2);  dshat = dc_t*w_c
    ds = rstd_s*(dshat - mean(dshat) - shat*mean(dshat*shat))
    da = [ds*g*i(1-i), ds*c_{t-1}*f(1-f), ds*i*(1-g^2), dh*tanh(c_t)*o(1-o)];  drh = da*w_r
    dr = rstd_r*(drh - mean(drh) - rhat*mean(drh*rhat))
    dc_{t-1} = ds*f,  dh_{t-1} = dr @ W_hh
Workspace row (9H + 2, fp32): [i, f, g, o | rhat (4H) | shat (H) | rstd_r, rstd_s].
"""

from dataclasses import replace

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
    sigmoid,
    step_index,
    store_rows,
    tanh,
)
from .launch import Plan, blocks, carry_dh, launch, plan, row_blocks, run


@triton.jit
def _param(ptr, off, jj, N, HAS: tl.constexpr):
    """(1, BN) fp32 tile ptr[off + jj] of a LayerNorm gain or shift, zero past N; 0.0 when
    there is none (HAS false)."""
    if HAS:
        p = tl.load(ptr + off + jj, mask=jj < N, other=0.0).to(tl.float32)[None, :]
    else:
        p = 0.0
    return p


@triton.jit
def _rstd(sum_sq, n, eps):
    """(BB, 1) 1/sqrt(sum_sq/n + eps); sqrt_rn, as tl.sqrt lowers to sqrt.approx on sm_90."""
    return (1.0 / tl.sqrt_rn(sum_sq / n + eps))[:, None]


@triton.jit
def _normalise(v, cm, n, eps):
    """LayerNorm without gain and shift of rows held in one (BB, BN) tile (n real columns,
    cm their (1, BN) mask): (vhat, rstd (BB, 1)). Two passes (mean, then the centred
    squares): no cancellation for rows with a large mean."""
    mu = tl.sum(tl.where(cm, v, 0.0), axis=1)[:, None] / n
    d = tl.where(cm, v - mu, 0.0)
    rstd = _rstd(tl.sum(d * d, axis=1), n, eps)
    return d * rstd, rstd


@triton.jit
def _normalise4(v_i, v_f, v_g, v_o, cm, n, eps):
    """_normalise of rows made of four (BB, BN) tiles (the 4H gate vector, n = 4H)."""
    mu = (
        tl.sum(tl.where(cm, v_i, 0.0), axis=1)
        + tl.sum(tl.where(cm, v_f, 0.0), axis=1)
        + tl.sum(tl.where(cm, v_g, 0.0), axis=1)
        + tl.sum(tl.where(cm, v_o, 0.0), axis=1)
    )[:, None] / n
    d_i = tl.where(cm, v_i - mu, 0.0)
    d_f = tl.where(cm, v_f - mu, 0.0)
    d_g = tl.where(cm, v_g - mu, 0.0)
    d_o = tl.where(cm, v_o - mu, 0.0)
    ss = tl.sum(d_i * d_i, axis=1) + tl.sum(d_f * d_f, axis=1) + tl.sum(d_g * d_g, axis=1) + tl.sum(d_o * d_o, axis=1)
    rstd = _rstd(ss, n, eps)
    return d_i * rstd, d_f * rstd, d_g * rstd, d_o * rstd, rstd


@triton.jit
def _normalise_backward(dv, vhat, rstd, cm, n):
    """Gradient reaching v from dv reaching vhat (one tile), zero outside the real columns."""
    m1 = tl.sum(dv, axis=1)[:, None] / n
    m2 = tl.sum(dv * vhat, axis=1)[:, None] / n
    return tl.where(cm, rstd * (dv - m1 - vhat * m2), 0.0)


@triton.jit
def _normalise4_backward(d_i, d_f, d_g, d_o, vh_i, vh_f, vh_g, vh_o, rstd, cm, n):
    """_normalise_backward over rows made of four tiles. The padded columns of dv and vhat
    are zero (zero gains and zero-masked vhat), so the sums see the real columns only."""
    m1 = (tl.sum(d_i, axis=1) + tl.sum(d_f, axis=1) + tl.sum(d_g, axis=1) + tl.sum(d_o, axis=1))[:, None] / n
    m2 = (
        tl.sum(d_i * vh_i, axis=1)
        + tl.sum(d_f * vh_f, axis=1)
        + tl.sum(d_g * vh_g, axis=1)
        + tl.sum(d_o * vh_o, axis=1)
    )[:, None] / n
    return (
        tl.where(cm, rstd * (d_i - m1 - vh_i * m2), 0.0),
        tl.where(cm, rstd * (d_f - m1 - vh_f * m2), 0.0),
        tl.where(cm, rstd * (d_g - m1 - vh_g * m2), 0.0),
        tl.where(cm, rstd * (d_o - m1 - vh_o * m2), 0.0),
    )


@triton.jit
def _ln_gate(x, rh, gr, br, TANH: tl.constexpr):
    """One gate from its x_proj_t part and its LN_hh-normalised product part rh (gain gr,
    shift br): sigmoid, or tanh for g."""
    a = x + rh * gr + br
    if TANH:
        v = tanh(a)
    else:
        v = sigmoid(a)
    return v


@triton.jit
def _ln_state(i, f, g, o, c_prev, gc, bc, cm, H, eps):
    """s = f*c_{t-1} + i*g, LN_c (gain gc, shift bc) -> shat, rstd_s, c_t, h_t = o*tanh(c_t)."""
    shat, rstd_s = _normalise(f * c_prev + i * g, cm, H, eps)
    c = shat * gc + bc
    return shat, rstd_s, c, o * tanh(c)


@triton.jit
def _ln_cell_backward(i, f, g, o, shat, rstd_s, c, c_prev, dh, dc, gc, cm, H):
    """dh: gradient reaching h_t (carried + dy_t); dc: reaching c_t from later steps.
    Returns da (4 tiles, = dx_proj_t), dc_t and dc_{t-1}. The gradient reaching the
    product, dr = LN_hh'(da*w_r), is _normalise4_backward's (the caller loads rhat for it
    only then: fewer tiles live at once)."""
    tc = tanh(c)
    dct = dc + dh * o * (1.0 - tc * tc)
    ds = _normalise_backward(dct * gc, shat, rstd_s, cm, H)
    return (
        ds * g * i * (1.0 - i),
        ds * c_prev * f * (1.0 - f),
        ds * i * (1.0 - g * g),
        dh * tc * o * (1.0 - o),
        dct,
        ds * f,
    )


@triton.jit
def _store_col(ptr, stride, rows, rmask, value):
    """(BB, 1) value into column 0 of the rows at ptr (row stride ``stride``)."""
    p = ptr + rows[:, None] * stride
    tl.store(p, value.to(ptr.dtype.element_ty), mask=rmask[:, None])


@triton.jit
def _load_col(ptr, stride, rows, rmask):
    """(BB, 1) fp32: column 0 of the rows at ptr (row stride ``stride``)."""
    return tl.load(ptr + rows[:, None] * stride, mask=rmask[:, None], other=0.0)


@triton.jit
def _store4(ptr, stride, rows, rmask, jj, H, a2, v_i, v_f, v_g, v_o):
    """Four (BB, BH) tiles into consecutive H-wide column blocks; zero where inactive."""
    store_rows(ptr, stride, rows, rmask, jj, H, tl.where(a2, v_i, 0.0))
    store_rows(ptr + H, stride, rows, rmask, jj, H, tl.where(a2, v_f, 0.0))
    store_rows(ptr + 2 * H, stride, rows, rmask, jj, H, tl.where(a2, v_g, 0.0))
    store_rows(ptr + 3 * H, stride, rows, rmask, jj, H, tl.where(a2, v_o, 0.0))


@triton.jit
def _ln_step(
    x_ptr,
    sxb,
    ws_ptr,
    cs_ptr,
    y_ptr,
    rows,
    rmask,
    jj,
    H,
    a2,
    r_i,
    r_f,
    r_g,
    r_o,
    h,
    c,
    gr_i,
    gr_f,
    gr_g,
    gr_o,
    br_i,
    br_f,
    br_g,
    br_o,
    gc,
    bc,
    eps,
):
    """One step on whole rows, given the recurrent products r*: adds x_proj[t] (rows at x_ptr,
    stride sxb), applies the cell, writes ws[t] (zero where inactive), the carried c_t to
    cs[t] and y[t] (zero where inactive). Returns the carried (h_t, c_t)."""
    # The cell (_normalise4, _ln_gate, _ln_state), with each workspace part stored as soon as
    # it is known: compiled for sm_90, storing them all at the end kept every tile live and
    # the H=64 sequence kernel spilled (python -m fastrnn.kernels.resources).
    cm = (jj < H)[None, :]
    W = 9 * H + 2
    rh_i, rh_f, rh_g, rh_o, rstd_r = _normalise4(r_i, r_f, r_g, r_o, cm, 4 * H, eps)
    _store4(ws_ptr + 4 * H, W, rows, rmask, jj, H, a2, rh_i, rh_f, rh_g, rh_o)
    _store_col(ws_ptr + 9 * H, W, rows, rmask, tl.where(a2, rstd_r, 0.0))
    i = _ln_gate(load_rows(x_ptr, sxb, rows, rmask, jj, H), rh_i, gr_i, br_i, False)
    f = _ln_gate(load_rows(x_ptr + H, sxb, rows, rmask, jj, H), rh_f, gr_f, br_f, False)
    g = _ln_gate(load_rows(x_ptr + 2 * H, sxb, rows, rmask, jj, H), rh_g, gr_g, br_g, True)
    o = _ln_gate(load_rows(x_ptr + 3 * H, sxb, rows, rmask, jj, H), rh_o, gr_o, br_o, False)
    _store4(ws_ptr, W, rows, rmask, jj, H, a2, i, f, g, o)
    shat, rstd_s, c_new, h_new = _ln_state(i, f, g, o, c, gc, bc, cm, H, eps)
    store_rows(ws_ptr + 8 * H, W, rows, rmask, jj, H, tl.where(a2, shat, 0.0))
    _store_col(ws_ptr + 9 * H + 1, W, rows, rmask, tl.where(a2, rstd_s, 0.0))
    c = tl.where(a2, c_new, c)
    store_rows(cs_ptr, H, rows, rmask, jj, H, c)
    store_rows(y_ptr, H, rows, rmask, jj, H, tl.where(a2, h_new, 0.0))
    return tl.where(a2, h_new, h), c


@triton.jit
def _ln_step_backward(
    dy_ptr,
    ws_ptr,
    dx_ptr,
    dcout_ptr,
    rows,
    rmask,
    jj,
    H,
    a2,
    c,
    c_prev,
    dh,
    dc,
    gr_i,
    gr_f,
    gr_g,
    gr_o,
    gc,
):
    """One reverse step on whole rows: reads dy[t] and ws[t], writes dx_proj[t] and
    dc_out[t] (zero where inactive). Returns dr (4 tiles, zero where inactive) and the
    carried dc_{t-1}; the caller forms dh_{t-1} = dr @ W_hh."""
    cm = (jj < H)[None, :]
    W = 9 * H + 2
    dt = dh + load_rows(dy_ptr, H, rows, rmask, jj, H)
    da_i, da_f, da_g, da_o, dct, dc_prev = _ln_cell_backward(
        load_rows(ws_ptr, W, rows, rmask, jj, H),
        load_rows(ws_ptr + H, W, rows, rmask, jj, H),
        load_rows(ws_ptr + 2 * H, W, rows, rmask, jj, H),
        load_rows(ws_ptr + 3 * H, W, rows, rmask, jj, H),
        load_rows(ws_ptr + 8 * H, W, rows, rmask, jj, H),
        _load_col(ws_ptr + 9 * H + 1, W, rows, rmask),
        c,
        c_prev,
        dt,
        dc,
        gc,
        cm,
        H,
    )
    _store4(dx_ptr, 4 * H, rows, rmask, jj, H, a2, da_i, da_f, da_g, da_o)
    store_rows(dcout_ptr, H, rows, rmask, jj, H, tl.where(a2, dct, 0.0))
    dr_i, dr_f, dr_g, dr_o = _normalise4_backward(
        da_i * gr_i,
        da_f * gr_f,
        da_g * gr_g,
        da_o * gr_o,
        load_rows(ws_ptr + 4 * H, W, rows, rmask, jj, H),
        load_rows(ws_ptr + 5 * H, W, rows, rmask, jj, H),
        load_rows(ws_ptr + 6 * H, W, rows, rmask, jj, H),
        load_rows(ws_ptr + 7 * H, W, rows, rmask, jj, H),
        _load_col(ws_ptr + 9 * H, W, rows, rmask),
        cm,
        4 * H,
    )
    return (
        tl.where(a2, dr_i, 0.0),
        tl.where(a2, dr_f, 0.0),
        tl.where(a2, dr_g, 0.0),
        tl.where(a2, dr_o, 0.0),
        tl.where(a2, dc_prev, dc),
    )


# ---------------------------------------------------------------------------------------
# Sequence kernels: W_hh, h and c on chip for the whole sequence
# ---------------------------------------------------------------------------------------
@triton.jit
def ln_fwd_seq_kernel(
    x_ptr,
    sxt,
    sxb,  # x_proj (T, B, 4H), LN_ih applied; strides of t and b, last dim contiguous
    w_ptr,  # w_hh (4H, H) contiguous
    lnr_w_ptr,
    lnr_b_ptr,  # LN_hh gain (4H,); shift (4H,), when HAS_LNR_B
    lnc_w_ptr,
    lnc_b_ptr,  # LN_c gain (H,); shift (H,), when HAS_LNC_B
    h0_ptr,
    c0_ptr,  # (B, H), (B, H) contiguous
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,  # out (T, B, H), input dtype
    ws_ptr,
    cs_ptr,  # out workspace (T, B, 9H + 2), carried c (T, B, H); fp32
    hn_ptr,
    cn_ptr,  # out (B, H), (B, H) fp32: final state
    eps,  # LayerNorm epsilon (fp32)
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LNR_B: tl.constexpr,
    HAS_LNC_B: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    # W_hh^T per gate, [k, j] = W_hh[n*H + j, k]; loaded once for all T steps
    w_i = gate_tile_t(w_ptr, 0, 0, H, H, BH, BH)
    w_f = gate_tile_t(w_ptr, 1, 0, H, H, BH, BH)
    w_g = gate_tile_t(w_ptr, 2, 0, H, H, BH, BH)
    w_o = gate_tile_t(w_ptr, 3, 0, H, H, BH, BH)
    gr_i = _param(lnr_w_ptr, 0, jj, H, True)
    gr_f = _param(lnr_w_ptr, H, jj, H, True)
    gr_g = _param(lnr_w_ptr, 2 * H, jj, H, True)
    gr_o = _param(lnr_w_ptr, 3 * H, jj, H, True)
    br_i = _param(lnr_b_ptr, 0, jj, H, HAS_LNR_B)
    br_f = _param(lnr_b_ptr, H, jj, H, HAS_LNR_B)
    br_g = _param(lnr_b_ptr, 2 * H, jj, H, HAS_LNR_B)
    br_o = _param(lnr_b_ptr, 3 * H, jj, H, HAS_LNR_B)
    gc = _param(lnc_w_ptr, 0, jj, H, True)
    bc = _param(lnc_b_ptr, 0, jj, H, HAS_LNC_B)
    h = load_rows(h0_ptr, H, rows, rmask, jj, H)
    c = load_rows(c0_ptr, H, rows, rmask, jj, H)
    for s in range(T):
        t = step_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        tb = t * B  # int32 offsets: _plan keeps T * B * (9H + 2) below 2^31 here
        h, c = _ln_step(
            x_ptr + tl.cast(t, tl.int64) * sxt,  # x_proj's time stride is the caller's: not bounded by _plan
            sxb,
            ws_ptr + tb * (9 * H + 2),
            cs_ptr + tb * H,
            y_ptr + tb * H,
            rows,
            rmask,
            jj,
            H,
            a2,
            mm(h, w_i, PRECISION),
            mm(h, w_f, PRECISION),
            mm(h, w_g, PRECISION),
            mm(h, w_o, PRECISION),
            h,
            c,
            gr_i,
            gr_f,
            gr_g,
            gr_o,
            br_i,
            br_f,
            br_g,
            br_o,
            gc,
            bc,
            eps,
        )
    store_rows(hn_ptr, H, rows, rmask, jj, H, h)
    store_rows(cn_ptr, H, rows, rmask, jj, H, c)


@triton.jit
def ln_bwd_seq_kernel(
    dy_ptr,  # (T, B, H) gradient of y, contiguous
    dhn_ptr,
    dcn_ptr,  # (B, H), (B, H) gradients of h_n, c_n
    w_ptr,  # w_hh (4H, H) contiguous
    lnr_w_ptr,  # LN_hh gain (4H,)
    lnc_w_ptr,  # LN_c gain (H,)
    c0_ptr,  # (B, H)
    ws_ptr,
    cs_ptr,  # forward workspace (T, B, 9H + 2), carried c (T, B, H); fp32
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    dx_ptr,  # out (T, B, 4H) fp32: dx_proj
    dcout_ptr,  # out (T, B, H) fp32: dc_t at active steps
    dh0_ptr,
    dc0_ptr,  # out (B, H), (B, H) fp32
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    # W_hh per gate, [j, k] = W_hh[n*H + j, k]: dh_{t-1} = sum_n dr_n @ W_n
    w_i = gate_tile(w_ptr, 0, 0, H, H, BH, BH)
    w_f = gate_tile(w_ptr, 1, 0, H, H, BH, BH)
    w_g = gate_tile(w_ptr, 2, 0, H, H, BH, BH)
    w_o = gate_tile(w_ptr, 3, 0, H, H, BH, BH)
    gr_i = _param(lnr_w_ptr, 0, jj, H, True)
    gr_f = _param(lnr_w_ptr, H, jj, H, True)
    gr_g = _param(lnr_w_ptr, 2 * H, jj, H, True)
    gr_o = _param(lnr_w_ptr, 3 * H, jj, H, True)
    gc = _param(lnc_w_ptr, 0, jj, H, True)
    dh = load_rows(dhn_ptr, H, rows, rmask, jj, H)
    dc = load_rows(dcn_ptr, H, rows, rmask, jj, H)
    m2 = rmask[:, None] & (jj < H)[None, :]
    off = rows[:, None] * H + jj[None, :]
    for s in range(T):
        fs = T - 1 - s  # the forward step being undone
        t = step_index(fs, T, REVERSE)
        prev = tl.minimum(tl.maximum(step_index(fs - 1, T, REVERSE), 0), T - 1)  # clamped; unused at fs=0
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        # c_{t-1}: the carried c of the previous step, or c0 at the first (masked loads, so
        # no scalar-condition select)
        first = tl.full((1, BH), fs, tl.int32) == 0
        tb = t * B  # int32 offsets: _plan keeps T * B * (9H + 2) below 2^31 here
        c_prev = tl.load(cs_ptr + prev * B * H + off, mask=m2 & ~first, other=0.0) + tl.load(
            c0_ptr + off, mask=m2 & first, other=0.0
        ).to(tl.float32)
        dr_i, dr_f, dr_g, dr_o, dc = _ln_step_backward(
            dy_ptr + tb * H,
            ws_ptr + tb * (9 * H + 2),
            dx_ptr + tb * 4 * H,
            dcout_ptr + tb * H,
            rows,
            rmask,
            jj,
            H,
            a2,
            load_rows(cs_ptr + tb * H, H, rows, rmask, jj, H),
            c_prev,
            dh,
            dc,
            gr_i,
            gr_f,
            gr_g,
            gr_o,
            gc,
        )
        dh_prev = (
            mm(dr_i, w_i, PRECISION) + mm(dr_f, w_f, PRECISION) + mm(dr_g, w_g, PRECISION) + mm(dr_o, w_o, PRECISION)
        )
        dh = tl.where(a2, dh_prev, dh)
    store_rows(dh0_ptr, H, rows, rmask, jj, H, dh)
    store_rows(dc0_ptr, H, rows, rmask, jj, H, dc)


# ---------------------------------------------------------------------------------------
# Step kernels: per step, the product over batch x hidden tiles, then a row kernel over
# batch rows that holds whole rows for the norms
# ---------------------------------------------------------------------------------------
@triton.jit
def ln_product_step_kernel(
    h_ptr,  # h_{t-1} (B, H) fp32
    w_ptr,  # w_hh (4H, H) contiguous
    r_ptr,  # out (B, 4H) fp32: h_{t-1} @ W_hh^T
    B,
    H,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    jm = jj < H
    zero = tl.zeros((BB, BH), tl.float32)
    # gate n: W_hh[n*H + j, k] -> W^T[k, j] at k*1 + j*H
    for n in tl.static_range(4):
        r = matmul_rows(zero, h_ptr, H, rows, rmask, H, w_ptr + n * H * H, 1, H, jj, jm, BK, PRECISION)
        store_rows(r_ptr + n * H, 4 * H, rows, rmask, jj, H, r)


@triton.jit(do_not_specialize=["t"])
def ln_fwd_row_kernel(
    x_ptr,
    sxb,  # x_proj[t] (B, 4H), row stride sxb, last dim contiguous
    r_ptr,  # h_{t-1} @ W_hh^T (B, 4H) fp32
    lnr_w_ptr,
    lnr_b_ptr,  # LN_hh gain (4H,); shift (4H,), when HAS_LNR_B
    lnc_w_ptr,
    lnc_b_ptr,  # LN_c gain (H,); shift (H,), when HAS_LNC_B
    hprev_ptr,
    cprev_ptr,  # h_{t-1} (B, H) fp32; c_{t-1} (B, H) (c0 or cs[prev])
    len_ptr,
    t,  # lengths (B,) int64 when HAS_LENGTHS; the time index
    ws_ptr,
    cs_ptr,  # out ws[t] (B, 9H + 2), cs[t] (B, H); fp32
    hnxt_ptr,
    y_ptr,  # out h_t (B, H) fp32, y[t] (B, H)
    eps,  # LayerNorm epsilon (fp32)
    B,
    H,
    HAS_LNR_B: tl.constexpr,
    HAS_LNC_B: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BR: tl.constexpr,
    BW: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BR, BW)  # BR whole rows
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    h, _ = _ln_step(
        x_ptr,
        sxb,
        ws_ptr,
        cs_ptr,
        y_ptr,
        rows,
        rmask,
        jj,
        H,
        a2,
        load_rows(r_ptr, 4 * H, rows, rmask, jj, H),
        load_rows(r_ptr + H, 4 * H, rows, rmask, jj, H),
        load_rows(r_ptr + 2 * H, 4 * H, rows, rmask, jj, H),
        load_rows(r_ptr + 3 * H, 4 * H, rows, rmask, jj, H),
        load_rows(hprev_ptr, H, rows, rmask, jj, H),
        load_rows(cprev_ptr, H, rows, rmask, jj, H),
        _param(lnr_w_ptr, 0, jj, H, True),
        _param(lnr_w_ptr, H, jj, H, True),
        _param(lnr_w_ptr, 2 * H, jj, H, True),
        _param(lnr_w_ptr, 3 * H, jj, H, True),
        _param(lnr_b_ptr, 0, jj, H, HAS_LNR_B),
        _param(lnr_b_ptr, H, jj, H, HAS_LNR_B),
        _param(lnr_b_ptr, 2 * H, jj, H, HAS_LNR_B),
        _param(lnr_b_ptr, 3 * H, jj, H, HAS_LNR_B),
        _param(lnc_w_ptr, 0, jj, H, True),
        _param(lnc_b_ptr, 0, jj, H, HAS_LNC_B),
        eps,
    )
    store_rows(hnxt_ptr, H, rows, rmask, jj, H, h)


@triton.jit(do_not_specialize=["t"])
def ln_bwd_row_kernel(
    dh_ptr,
    dy_ptr,  # carried dh (B, H) fp32; dy[t] (B, H)
    lnr_w_ptr,  # LN_hh gain (4H,)
    lnc_w_ptr,  # LN_c gain (H,)
    ws_ptr,
    c_ptr,  # ws[t] (B, 9H + 2), cs[t] (B, H); fp32
    cprev_ptr,  # c_{t-1} (B, H): c0 or cs[prev]
    dc_ptr,  # carried dc (B, H) fp32, updated in place (own rows only)
    len_ptr,
    t,
    dx_ptr,  # out dx_proj[t] (B, 4H) fp32
    dr_ptr,  # out (B, 4H) fp32: dr of step t (zero rows where inactive), for carry_dh
    dcout_ptr,  # out dc_out[t] (B, H) fp32
    B,
    H,
    HAS_LENGTHS: tl.constexpr,
    BR: tl.constexpr,
    BW: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BR, BW)  # BR whole rows
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    dc = load_rows(dc_ptr, H, rows, rmask, jj, H)
    dr_i, dr_f, dr_g, dr_o, dc = _ln_step_backward(
        dy_ptr,
        ws_ptr,
        dx_ptr,
        dcout_ptr,
        rows,
        rmask,
        jj,
        H,
        a2,
        load_rows(c_ptr, H, rows, rmask, jj, H),
        load_rows(cprev_ptr, H, rows, rmask, jj, H),
        load_rows(dh_ptr, H, rows, rmask, jj, H),
        dc,
        _param(lnr_w_ptr, 0, jj, H, True),
        _param(lnr_w_ptr, H, jj, H, True),
        _param(lnr_w_ptr, 2 * H, jj, H, True),
        _param(lnr_w_ptr, 3 * H, jj, H, True),
        _param(lnc_w_ptr, 0, jj, H, True),
    )
    _store4(dr_ptr, 4 * H, rows, rmask, jj, H, a2, dr_i, dr_f, dr_g, dr_o)
    store_rows(dc_ptr, H, rows, rmask, jj, H, dc)


# ---------------------------------------------------------------------------------------
# Launchers: which tensors each kernel takes; the shape, grids and blocks come from launch.py
# ---------------------------------------------------------------------------------------
# Warps of the sequence kernels, whatever their size. Compiled for sm_90 (python -m
# fastrnn.kernels.resources), with the LSTM's rule (4 warps below H=64 fp32 / H=128 half)
# the backward spilled 16 B at H=32 bf16 and most H=16/32 kernels took 226-255 registers;
# with 8 warps none spills (175-186 registers). At H=64 (8 warps either way) the forward
# takes 245-255 registers without spills and the backward 255 with an 8 B spill.
SEQ_WARPS = 8


def _plan(T: int, B: int, H: int, w_hh: torch.Tensor, x_row: int = 0) -> Plan:
    """launch.plan's shape and blocks (no persistent kernels), SEQ_WARPS for the sequence
    kernels. The sequence kernels address the whole (T, B, 9H + 2) workspace with int32
    offsets (int64 ones cost 10-40 registers and brought back the H=64 spills, compiled for
    sm_90): past 2^31 elements the step kernels run, which address one step at a time.
    ``x_row``: x_proj's batch stride (launch.plan's ``row``)."""
    elem = w_hh.element_size()
    p = plan(4, H, H, False, elem, B, w_hh.device, has_persistent=False, row=max(9 * H + 2, x_row))
    if p.shape == "sequence" and T * B * (9 * H + 2) >= 2**31:
        p = Plan("step", B, H, H, blocks("step", 4, H, H, False, elem))
    return replace(p, meta={**p.meta, "num_warps": SEQ_WARPS}) if p.shape == "sequence" else p


def _row_plan(p: Plan) -> Plan:
    """The row kernels' plan beside a step plan: whole rows, ``launch.row_blocks``."""
    return Plan(p.shape, p.B, p.H, p.P, row_blocks(p.H))


def forward(x_proj, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0, lengths, reverse, eps, precision):
    """-> y (T, B, H), h_n (B, H), c_n (B, H) in the input dtype; ws (T, B, 9H + 2) and
    cs (T, B, H) fp32."""
    T, B, G = x_proj.shape
    H = G // 4
    x_proj = kernel_input(x_proj)
    dev, f32, dtype = x_proj.device, torch.float32, x_proj.dtype
    y = alloc(T, B, H, device=dev, dtype=dtype)
    ws = alloc(T, B, 9 * H + 2, device=dev, dtype=f32)
    cs = alloc(T, B, H, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return y, h0.clone(), c0.clone(), ws, cs
    w_hh, c0 = w_hh.contiguous(), c0.contiguous()
    lnr_w, lnc_w = ln_hh_weight.contiguous(), ln_c_weight.contiguous()
    ln = dict(
        lnr_w_ptr=lnr_w,
        lnr_b_ptr=lnr_w if ln_hh_bias is None else ln_hh_bias.contiguous(),  # any valid pointer when unused
        lnc_w_ptr=lnc_w,
        lnc_b_ptr=lnc_w if ln_c_bias is None else ln_c_bias.contiguous(),
        HAS_LNR_B=ln_hh_bias is not None,
        HAS_LNC_B=ln_c_bias is not None,
        eps=float(eps),
    )
    lens = lengths if lengths is not None else cs
    p = _plan(T, B, H, w_hh, x_proj.stride(1))
    # h_{t-1} and h_t of the step kernels ([0] starts as h0); h_n = hbuf[T % 2]
    hbuf = alloc(2, B, H, device=dev, dtype=f32)
    hbuf[0].copy_(h0)
    c_n = alloc(B, H, device=dev, dtype=f32)

    def sequence():
        launch(
            ln_fwd_seq_kernel,
            p,
            x_ptr=x_proj,
            sxt=x_proj.stride(0),
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            h0_ptr=h0.contiguous(),
            c0_ptr=c0,
            len_ptr=lens,
            y_ptr=y,
            ws_ptr=ws,
            cs_ptr=cs,
            hn_ptr=hbuf[T % 2],
            cn_ptr=c_n,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            HAS_LENGTHS=lengths is not None,
            PRECISION=precision,
            **ln,
        )

    rp = _row_plan(p)
    r = alloc(B, G, device=dev, dtype=f32) if p.shape == "step" else hbuf  # h_{t-1} @ W_hh^T

    def step(s, t, prev):
        hprev, hnxt = hbuf[s % 2], hbuf[(s + 1) % 2]
        launch(ln_product_step_kernel, p, "H", h_ptr=hprev, w_ptr=w_hh, r_ptr=r, B=B, H=H, PRECISION=precision)
        launch(
            ln_fwd_row_kernel,
            rp,
            "rows",
            x_ptr=x_proj[t],
            sxb=x_proj.stride(1),
            r_ptr=r,
            hprev_ptr=hprev,
            cprev_ptr=c0 if prev < 0 else cs[prev],
            len_ptr=lens,
            t=t,
            ws_ptr=ws[t],
            cs_ptr=cs[t],
            hnxt_ptr=hnxt,
            y_ptr=y[t],
            B=B,
            H=H,
            HAS_LENGTHS=lengths is not None,
            **ln,
        )
        if s == T - 1:  # the step kernels carry c through cs
            c_n.copy_(cs[t])

    run(p, T, reverse, backward=False, sequence=sequence, step=step)
    return y, hbuf[T % 2].to(dtype), c_n.to(dtype), ws, cs


def backward(dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, c0, ws, cs, lengths, reverse, precision):
    """-> dx_proj (T, B, 4H), dh0 (B, H), dc0 (B, H), dc_out (T, B, H), all fp32."""
    T, B, H = cs.shape
    G = 4 * H
    dev, f32 = dy.device, torch.float32
    dx = alloc(T, B, G, device=dev, dtype=f32)
    dcout = alloc(T, B, H, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return dx, dh_n.to(f32, copy=True), dc_n.to(f32, copy=True), dcout
    dy, dh_n, dc_n, w_hh, c0 = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), w_hh.contiguous(), c0.contiguous()
    ws, cs = ws.contiguous(), cs.contiguous()
    ln = dict(lnr_w_ptr=ln_hh_weight.contiguous(), lnc_w_ptr=ln_c_weight.contiguous())
    lens = lengths if lengths is not None else dx
    p = _plan(T, B, H, w_hh)
    dh = alloc(B, H, device=dev, dtype=f32)
    dc = alloc(B, H, device=dev, dtype=f32)

    def sequence():
        launch(
            ln_bwd_seq_kernel,
            p,
            dy_ptr=dy,
            dhn_ptr=dh_n,
            dcn_ptr=dc_n,
            w_ptr=w_hh,
            c0_ptr=c0,
            ws_ptr=ws,
            cs_ptr=cs,
            len_ptr=lens,
            dx_ptr=dx,
            dcout_ptr=dcout,
            dh0_ptr=dh,
            dc0_ptr=dc,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            HAS_LENGTHS=lengths is not None,
            PRECISION=precision,
            **ln,
        )

    rp = _row_plan(p)
    dr = alloc(B, G, device=dev, dtype=f32) if p.shape == "step" else dh  # dr of step t

    def step(s, t, prev):
        if s == T - 1:  # the first step undone: the step kernels carry dh, dc in place from dh_n, dc_n
            dh.copy_(dh_n)
            dc.copy_(dc_n)
        launch(
            ln_bwd_row_kernel,
            rp,
            "rows",
            dh_ptr=dh,
            dy_ptr=dy[t],
            ws_ptr=ws[t],
            c_ptr=cs[t],
            cprev_ptr=c0 if prev < 0 else cs[prev],
            dc_ptr=dc,
            len_ptr=lens,
            t=t,
            dx_ptr=dx[t],
            dr_ptr=dr,
            dcout_ptr=dcout[t],
            B=B,
            H=H,
            HAS_LENGTHS=lengths is not None,
            **ln,
        )
        carry_dh(p, dr, w_hh, dh, None, lens, lengths is not None, t, precision)

    run(p, T, reverse, backward=True, sequence=sequence, step=step)
    return dx, dh, dc, dcout
