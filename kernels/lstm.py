"""LSTM recurrence in Triton (proj_size included): three kernel shapes, forward and backward.

* Sequence kernel (one launch): a program owns BLOCK_B batch rows and the whole hidden
  width, loads the W_hh gate tiles (and W_hr) once, and keeps them, h and c on chip for all
  T steps. No inter-program synchronisation. Chosen when the tiles fit (``kernel_shape``).
* Step kernels (one launch per step): programs tile batch x hidden; each streams its W_hh
  columns, fuses h_{t-1} @ W_hh^T with the cell and the state update. With a projection a
  second launch computes h_t = m_t @ W_hr^T. Backward: the cell step, then the shared
  ``carry_dh`` step for dh_{t-1} = dgates_t @ W_hh.
* Persistent kernels (no projection; only when forced): programs tile batch x hidden,
  keep their W_hh slice on chip for all T steps and meet at a grid barrier each step.

Every kernel takes its cell as a constexpr @triton.jit helper (forward kernels CELL,
backward kernels CELL_BACKWARD) plus an optional (n, H) tile of per-unit cell parameters
(cp_ptr, HAS_CELL_PARAMS, CP_ROWS); the LSTM passes ``_lstm_cell`` / ``_lstm_cell_backward``
(LSTM_CELL) and no parameters. Any LSTM-shaped cell (four gates, state (h, c), the gate
activations and c_t enough to undo a step) is one more such pair with the same arguments:
    CELL(a_i, a_f, a_g, a_o, c_prev, cp) -> i, f, g, o, c_t, m_t
    CELL_BACKWARD(i, f, g, o, c_t, c_prev, dm, dc, cp) -> da_i, da_f, da_g, da_o, dc_prev
with cp the (CP_ROWS, BH) parameter tile (rows read with ``cell_param``). The kernels mask
inactive steps and store the results. Gradients of per-unit parameters are not computed
here: where a parameter multiplies a state inside a pre-activation (a peephole: a_i += p*c_prev),
its gradient is sum over (t, b) of da * state, one reduction after the loop over dx_proj and
cs/c0, which the caller has, like dW_hh (deterministic, no atomics). ``forward`` and
``backward`` at the end name the tensors of each kernel; launch.py picks the shape and
launches them.

Backward of one step (m_t = o*tanh(c_t), h_t = m_t or m_t @ W_hr^T):
    dm = dh_t (or dh_t @ W_hr);  dc_t += dm*o*(1 - tanh(c_t)^2)
    di = dc_t*g*i(1-i), df = dc_t*c_{t-1}*f(1-f), dg = dc_t*i*(1-g^2), do = dm*tanh(c_t)*o(1-o)
    dc_{t-1} = dc_t*f,  dh_{t-1} = [di df dg do] @ W_hh
"""

import torch
import triton
import triton.language as tl

from ._common import (
    active_rows,
    alloc,
    gate_tile,
    gate_tile_t,
    grid_barrier,
    kernel_input,
    load_cell_params,
    load_rows,
    matmul_rows,
    mm,
    persistent_product,
    program_tile,
    sigmoid,
    split_dot,
    split_tile,
    split_total,
    split_zeros,
    stacked_slices,
    store_rows,
    tanh,
    time_index,
)
from .graphs import step_graphs
from .launch import carry_dh, launch, launch_persistent, plan, run, step_fallback


@triton.jit
def _lstm_cell(xi, xf, xg, xo, c_prev, cp):
    """Pre-activations -> activated gates, c_t, m_t = o*tanh(c_t). The only copy of the math.
    cp: the (CP_ROWS, BH) tile of per-unit cell parameters (``cell_param``); none here."""
    i = sigmoid(xi)
    f = sigmoid(xf)
    g = tanh(xg)
    o = sigmoid(xo)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def _lstm_cell_backward(i, f, g, o, c, c_prev, dm, dc, cp):
    """dm: gradient reaching m_t; dc: reaching c_t from later steps; cp as in _lstm_cell.
    Returns d(pre-activations) and dc_{t-1}."""
    tc = tanh(c)
    dct = dc + dm * o * (1.0 - tc * tc)
    return (
        dct * g * i * (1.0 - i),
        dct * c_prev * f * (1.0 - f),
        dct * i * (1.0 - g * g),
        dm * tc * o * (1.0 - o),
        dct * f,
    )


@triton.jit
def _store_gates(ptr, rows, rmask, jj, H, a2, i, f, g, o):
    """Four (BB, BH) gate tiles into a (B, 4H) row block; zero where the step is inactive."""
    store_rows(ptr, 4 * H, rows, rmask, jj, H, tl.where(a2, i, 0.0))
    store_rows(ptr + H, 4 * H, rows, rmask, jj, H, tl.where(a2, f, 0.0))
    store_rows(ptr + 2 * H, 4 * H, rows, rmask, jj, H, tl.where(a2, g, 0.0))
    store_rows(ptr + 3 * H, 4 * H, rows, rmask, jj, H, tl.where(a2, o, 0.0))


@triton.jit
def _lstm_step(x_ptr, sxb, gates_ptr, cs_ptr, rows, rmask, jj, H, a2, ri, rf, rg, ro, c, cp, CELL: tl.constexpr):
    """One step on the units jj, given the recurrent products r* = h_{t-1} @ W_hh^T of each
    gate: adds x_proj[t] (rows at x_ptr, stride sxb), applies the cell, writes the gates
    (zero where inactive) and the carried c_t to gates[t] / cs[t]. Returns (c_t, m_t)."""
    xi, xf, xg, xo = _x_gates(x_ptr, sxb, rows, rmask, jj, H)
    return _lstm_step_x(gates_ptr, cs_ptr, rows, rmask, jj, H, a2, xi + ri, xf + rf, xg + rg, xo + ro, c, cp, CELL)


@triton.jit
def _x_gates(x_ptr, sxb, rows, rmask, jj, H):
    """x_proj[t]'s four gate tiles on the units jj (rows at x_ptr, stride sxb), fp32."""
    return (
        load_rows(x_ptr, sxb, rows, rmask, jj, H),
        load_rows(x_ptr + H, sxb, rows, rmask, jj, H),
        load_rows(x_ptr + 2 * H, sxb, rows, rmask, jj, H),
        load_rows(x_ptr + 3 * H, sxb, rows, rmask, jj, H),
    )


@triton.jit
def _lstm_step_x(gates_ptr, cs_ptr, rows, rmask, jj, H, a2, zi, zf, zg, zo, c, cp, CELL: tl.constexpr):
    """_lstm_step from the gates' pre-activations z* = x_proj[t] + h_{t-1} @ W_hh^T."""
    i, f, g, o, c_new, m = CELL(zi, zf, zg, zo, c, cp)
    _store_gates(gates_ptr, rows, rmask, jj, H, a2, i, f, g, o)
    c = tl.where(a2, c_new, c)
    store_rows(cs_ptr, H, rows, rmask, jj, H, c)
    return c, m


# ---------------------------------------------------------------------------------------
# Sequence kernels: weights, h and c on chip for the whole sequence
# ---------------------------------------------------------------------------------------
@triton.jit
def lstm_fwd_seq_kernel(
    x_ptr,
    sxt,
    sxb,  # x_proj (T, B, 4H); strides of t and b, last dim contiguous
    w_ptr,  # w_hh (4H, P) contiguous
    wr_ptr,  # w_hr (P, H) contiguous, when HAS_PROJ
    h0_ptr,
    c0_ptr,  # (B, P), (B, H) contiguous
    cp_ptr,  # (CP_ROWS, H) fp32 per-unit cell parameters, when HAS_CELL_PARAMS
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,  # out (T, B, P), input dtype
    gates_ptr,
    cs_ptr,  # out workspace (T, B, 4H) activated gates, (T, B, H) carried c; fp32
    hn_ptr,
    cn_ptr,  # out (B, P), (B, H) fp32: final state
    T,
    B,
    H,
    P,
    REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    CELL: tl.constexpr,
    HAS_CELL_PARAMS: tl.constexpr,
    CP_ROWS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BP: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    pp = tl.arange(0, BP)
    # W_hh^T per gate, [k, j] = W_hh[n*H + j, k]; loaded once for all T steps
    w_i = gate_tile_t(w_ptr, 0, 0, H, P, BP, BH)
    w_f = gate_tile_t(w_ptr, 1, 0, H, P, BP, BH)
    w_g = gate_tile_t(w_ptr, 2, 0, H, P, BP, BH)
    w_o = gate_tile_t(w_ptr, 3, 0, H, P, BP, BH)
    if HAS_PROJ:
        w_r = gate_tile_t(wr_ptr, 0, 0, P, H, BH, BP)  # [j, p] = W_hr[p, j]
    h = load_rows(h0_ptr, P, rows, rmask, pp, P)
    c = load_rows(c0_ptr, H, rows, rmask, jj, H)
    cp = load_cell_params(cp_ptr, jj, H, HAS_CELL_PARAMS, CP_ROWS)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        c, m = _lstm_step(
            x_ptr + t * sxt,
            sxb,
            gates_ptr + t * B * 4 * H,
            cs_ptr + t * B * H,
            rows,
            rmask,
            jj,
            H,
            a2,
            mm(h, w_i, PRECISION),
            mm(h, w_f, PRECISION),
            mm(h, w_g, PRECISION),
            mm(h, w_o, PRECISION),
            c,
            cp,
            CELL,
        )
        if HAS_PROJ:
            h_new = mm(m, w_r, PRECISION)
        else:
            h_new = m
        h = tl.where(a2, h_new, h)
        store_rows(y_ptr + t * B * P, P, rows, rmask, pp, P, tl.where(a2, h_new, 0.0))
    store_rows(hn_ptr, P, rows, rmask, pp, P, h)
    store_rows(cn_ptr, H, rows, rmask, jj, H, c)


@triton.jit
def lstm_bwd_seq_kernel(
    dy_ptr,  # (T, B, P) gradient of y, contiguous
    dhn_ptr,
    dcn_ptr,  # (B, P), (B, H) gradients of h_n, c_n
    w_ptr,
    wr_ptr,  # w_hh (4H, P), w_hr (P, H), contiguous
    c0_ptr,  # (B, H)
    gates_ptr,
    cs_ptr,  # forward workspace, fp32
    cp_ptr,  # (CP_ROWS, H) fp32 per-unit cell parameters, when HAS_CELL_PARAMS
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    dg_ptr,  # out (T, B, 4H) fp32: dgates = d x_proj
    dhout_ptr,  # out (T, B, P) fp32: gradient reaching h_t at active steps (HAS_PROJ)
    dh0_ptr,
    dc0_ptr,  # out (B, P), (B, H) fp32
    T,
    B,
    H,
    P,
    REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    CELL_BACKWARD: tl.constexpr,
    HAS_CELL_PARAMS: tl.constexpr,
    CP_ROWS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BP: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    pp = tl.arange(0, BP)
    # W_hh per gate, [j, k] = W_hh[n*H + j, k]: dh_{t-1} = sum_n dgate_n @ W_n
    w_i = gate_tile(w_ptr, 0, 0, H, P, BH, BP)
    w_f = gate_tile(w_ptr, 1, 0, H, P, BH, BP)
    w_g = gate_tile(w_ptr, 2, 0, H, P, BH, BP)
    w_o = gate_tile(w_ptr, 3, 0, H, P, BH, BP)
    if HAS_PROJ:
        w_r = gate_tile(wr_ptr, 0, 0, P, H, BP, BH)  # [p, j] = W_hr[p, j]
    dh = load_rows(dhn_ptr, P, rows, rmask, pp, P)
    dc = load_rows(dcn_ptr, H, rows, rmask, jj, H)
    cp = load_cell_params(cp_ptr, jj, H, HAS_CELL_PARAMS, CP_ROWS)
    m2 = rmask[:, None] & (jj < H)[None, :]
    for s in range(T):
        fs = T - 1 - s  # the forward step being undone
        t = time_index(fs, T, REVERSE)
        prev = tl.minimum(tl.maximum(time_index(fs - 1, T, REVERSE), 0), T - 1)  # clamped; unused at fs=0
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        dt = dh + load_rows(dy_ptr + t * B * P, P, rows, rmask, pp, P)
        if HAS_PROJ:
            store_rows(dhout_ptr + t * B * P, P, rows, rmask, pp, P, tl.where(a2, dt, 0.0))
            dm = mm(dt, w_r, PRECISION)
        else:
            dm = dt
        gt = gates_ptr + t * B * 4 * H
        i = load_rows(gt, 4 * H, rows, rmask, jj, H)
        f = load_rows(gt + H, 4 * H, rows, rmask, jj, H)
        g = load_rows(gt + 2 * H, 4 * H, rows, rmask, jj, H)
        o = load_rows(gt + 3 * H, 4 * H, rows, rmask, jj, H)
        c = load_rows(cs_ptr + t * B * H, H, rows, rmask, jj, H)
        # c_{t-1}: the carried c of the previous step, or c0 at the first (masked loads, so
        # no scalar-condition select)
        off = rows[:, None] * H + jj[None, :]
        first = tl.full((1, BH), fs, tl.int32) == 0
        c_prev = tl.load(cs_ptr + prev * B * H + off, mask=m2 & ~first, other=0.0) + tl.load(
            c0_ptr + off, mask=m2 & first, other=0.0
        ).to(tl.float32)
        di, df, dg, do, dc_prev = CELL_BACKWARD(i, f, g, o, c, c_prev, dm, dc, cp)
        di = tl.where(a2, di, 0.0)
        df = tl.where(a2, df, 0.0)
        dg = tl.where(a2, dg, 0.0)
        do = tl.where(a2, do, 0.0)
        _store_gates(dg_ptr + t * B * 4 * H, rows, rmask, jj, H, a2, di, df, dg, do)
        dc = tl.where(a2, dc_prev, dc)
        dh_prev = mm(di, w_i, PRECISION) + mm(df, w_f, PRECISION) + mm(dg, w_g, PRECISION) + mm(do, w_o, PRECISION)
        dh = tl.where(a2, dh_prev, dh)
    store_rows(dh0_ptr, P, rows, rmask, pp, P, dh)
    store_rows(dc0_ptr, H, rows, rmask, jj, H, dc)


# ---------------------------------------------------------------------------------------
# Step kernels: one launch per time step, grid (batch blocks, hidden tiles)
# ---------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["t"])
def lstm_fwd_step_kernel(
    x_ptr,
    sxb,  # x_proj[t] (B, 4H), row stride sxb, last dim contiguous
    w_ptr,  # w_hh (4H, P) contiguous
    hprev_ptr,
    cprev_ptr,  # h_{t-1} (B, P) fp32; c_{t-1} (B, H) (c0 or cs[prev])
    cp_ptr,  # (CP_ROWS, H) fp32 per-unit cell parameters, when HAS_CELL_PARAMS
    len_ptr,
    t,  # lengths (B,) int64 when HAS_LENGTHS; the time index
    gates_ptr,
    c_ptr,  # out gates[t] (B, 4H), cs[t] (B, H); fp32
    m_ptr,  # out (B, H) fp32: m_t, when HAS_PROJ (lstm_proj_step_kernel follows)
    hnxt_ptr,
    y_ptr,  # out h_t (B, P) fp32 and y[t] (B, P), when not HAS_PROJ
    B,
    H,
    P,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    CELL: tl.constexpr,
    HAS_CELL_PARAMS: tl.constexpr,
    CP_ROWS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    jm = jj < H
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    # gate n: W_hh[n*H + j, k] -> W^T[k, j] at k*1 + j*P
    zero = tl.zeros((BB, BH), tl.float32)
    _, m = _lstm_step(
        x_ptr,
        sxb,
        gates_ptr,
        c_ptr,
        rows,
        rmask,
        jj,
        H,
        a2,
        matmul_rows(zero, hprev_ptr, P, rows, rmask, P, w_ptr, 1, P, jj, jm, BK, PRECISION),
        matmul_rows(zero, hprev_ptr, P, rows, rmask, P, w_ptr + H * P, 1, P, jj, jm, BK, PRECISION),
        matmul_rows(zero, hprev_ptr, P, rows, rmask, P, w_ptr + 2 * H * P, 1, P, jj, jm, BK, PRECISION),
        matmul_rows(zero, hprev_ptr, P, rows, rmask, P, w_ptr + 3 * H * P, 1, P, jj, jm, BK, PRECISION),
        load_rows(cprev_ptr, H, rows, rmask, jj, H),
        load_cell_params(cp_ptr, jj, H, HAS_CELL_PARAMS, CP_ROWS),
        CELL,
    )
    if HAS_PROJ:
        store_rows(m_ptr, H, rows, rmask, jj, H, m)
    else:
        h_prev = load_rows(hprev_ptr, P, rows, rmask, jj, P)
        store_rows(hnxt_ptr, P, rows, rmask, jj, P, tl.where(a2, m, h_prev))
        store_rows(y_ptr, P, rows, rmask, jj, P, tl.where(a2, m, 0.0))


@triton.jit(do_not_specialize=["t"])
def lstm_proj_step_kernel(
    m_ptr,  # m_t (B, H) fp32
    wr_ptr,  # w_hr (P, H) contiguous
    hprev_ptr,
    len_ptr,
    t,  # h_{t-1} (B, P) fp32; lengths; the time index
    hnxt_ptr,
    y_ptr,  # out h_t (B, P) fp32, y[t] (B, P)
    B,
    H,
    P,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BP: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, pp = program_tile(B, BB, BP)
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    # h = m @ W_hr^T: W_hr[p, k] -> W^T[k, p] at k*1 + p*H
    h = matmul_rows(tl.zeros((BB, BP), tl.float32), m_ptr, H, rows, rmask, H, wr_ptr, 1, H, pp, pp < P, BK, PRECISION)
    h_prev = load_rows(hprev_ptr, P, rows, rmask, pp, P)
    store_rows(hnxt_ptr, P, rows, rmask, pp, P, tl.where(a2, h, h_prev))
    store_rows(y_ptr, P, rows, rmask, pp, P, tl.where(a2, h, 0.0))


@triton.jit(do_not_specialize=["t"])
def lstm_dt_step_kernel(
    dh_ptr,
    dy_ptr,  # carried dh (B, P) fp32; dy[t] (B, P)
    len_ptr,
    t,
    dt_ptr,
    dhout_ptr,  # out (B, P) fp32: dh + dy[t]; dhout[t] = that at active rows, else 0
    B,
    P,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BP: tl.constexpr,
):
    rows, rmask, pp = program_tile(B, BB, BP)
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    dt = load_rows(dh_ptr, P, rows, rmask, pp, P) + load_rows(dy_ptr, P, rows, rmask, pp, P)
    store_rows(dt_ptr, P, rows, rmask, pp, P, dt)
    store_rows(dhout_ptr, P, rows, rmask, pp, P, tl.where(a2, dt, 0.0))


@triton.jit(do_not_specialize=["t", "t_after"])
def lstm_bwd_step_kernel(
    dh_ptr,
    dy_ptr,  # carried dh (B, P) fp32 and dy[t] (B, P), read when not HAS_PROJ
    dt_ptr,
    wr_ptr,  # dh + dy[t] (B, P) fp32 and w_hr (P, H), when HAS_PROJ
    gates_ptr,
    c_ptr,  # gates[t] (B, 4H), cs[t] (B, H); fp32
    cprev_ptr,  # c_{t-1} (B, H): c0 or cs[prev]
    dc_ptr,  # carried dc (B, H) fp32, updated in place (own tile only)
    cp_ptr,  # (CP_ROWS, H) fp32 per-unit cell parameters, when HAS_CELL_PARAMS
    len_ptr,
    t,
    dg_ptr,  # out dgates[t] (B, 4H) fp32
    dga_ptr,  # dgates of the step after t (B, 4H) fp32, when CARRY
    w_ptr,  # w_hh (4H, H) contiguous, when CARRY
    t_after,  # that step's time index, when CARRY
    B,
    H,
    P,
    HAS_PROJ: tl.constexpr,
    CARRY: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    CELL_BACKWARD: tl.constexpr,
    HAS_CELL_PARAMS: tl.constexpr,
    CP_ROWS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    if HAS_PROJ:
        # dm = dt @ W_hr: W_hr[p, j] at p*H + j
        dm = matmul_rows(
            tl.zeros((BB, BH), tl.float32), dt_ptr, P, rows, rmask, P, wr_ptr, H, 1, jj, jj < H, BK, PRECISION
        )
    else:
        dh = load_rows(dh_ptr, P, rows, rmask, jj, P)
        if CARRY:
            # carry_dh of the step after t, fused (no projection: this program's columns of
            # dh are its units jj): rows active there take dgates_after @ W_hh, the others
            # keep the gradient they carry. The same product, summed in the same order.
            acc = matmul_rows(
                tl.zeros((BB, BH), tl.float32),
                dga_ptr,
                4 * H,
                rows,
                rmask,
                4 * H,
                w_ptr,
                H,
                1,
                jj,
                jj < H,
                BK,
                PRECISION,
            )
            dh = tl.where(active_rows(t_after, rows, rmask, len_ptr, HAS_LENGTHS)[:, None], acc, dh)
            store_rows(dh_ptr, P, rows, rmask, jj, P, dh)
        dm = dh + load_rows(dy_ptr, P, rows, rmask, jj, P)
    i = load_rows(gates_ptr, 4 * H, rows, rmask, jj, H)
    f = load_rows(gates_ptr + H, 4 * H, rows, rmask, jj, H)
    g = load_rows(gates_ptr + 2 * H, 4 * H, rows, rmask, jj, H)
    o = load_rows(gates_ptr + 3 * H, 4 * H, rows, rmask, jj, H)
    dc = load_rows(dc_ptr, H, rows, rmask, jj, H)
    di, df, dg, do, dc_prev = CELL_BACKWARD(
        i,
        f,
        g,
        o,
        load_rows(c_ptr, H, rows, rmask, jj, H),
        load_rows(cprev_ptr, H, rows, rmask, jj, H),
        dm,
        dc,
        load_cell_params(cp_ptr, jj, H, HAS_CELL_PARAMS, CP_ROWS),
    )
    _store_gates(dg_ptr, rows, rmask, jj, H, a2, di, df, dg, do)
    store_rows(dc_ptr, H, rows, rmask, jj, H, tl.where(a2, dc_prev, dc))


# ---------------------------------------------------------------------------------------
# Persistent kernels (no projection): programs tile batch x hidden, each keeps its W_hh
# slice on chip for all T steps; a grid barrier per step among the programs of a batch
# block separates the steps. Forward: h_t is exchanged through a double-buffered global
# array, so one barrier per step suffices. Backward: each program writes its dgates
# columns, waits, then computes its own columns of dh_{t-1} = dgates_t @ W_hh.
# ---------------------------------------------------------------------------------------
@triton.jit
def lstm_fwd_persistent_kernel(
    x_ptr,
    sxt,
    sxb,  # x_proj (T, B, 4H); strides of t and b, last dim contiguous
    w_ptr,  # w_hh (4H, H) contiguous
    cp_ptr,  # (CP_ROWS, H) fp32 per-unit cell parameters, when HAS_CELL_PARAMS
    h0_ptr,
    c0_ptr,
    len_ptr,  # (B, H), (B, H); lengths (B,) int64 when HAS_LENGTHS
    y_ptr,  # out (T, B, H), input dtype
    gates_ptr,
    cs_ptr,  # out workspace (T, B, 4H), (T, B, H); fp32
    hbuf_ptr,  # (2, B, H) in w_hh's dtype: h exchanged between programs; [0] holds h0
    hn_ptr,
    cn_ptr,  # out (B, H), (B, H) fp32
    count_ptr,  # (n_b,) int32 zeros: barrier counter of each batch block
    err_ptr,  # (1,) int32 zero: grid_barrier's error flag (1 + the step it gave up at)
    max_polls,  # grid_barrier's bound on a wait
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    CELL: tl.constexpr,
    HAS_CELL_PARAMS: tl.constexpr,
    CP_ROWS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    KB: tl.constexpr,
    KC: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    j0 = tl.program_id(1) * BH
    # this program's rows of every gate's W_hh, stacked, in K chunks
    w_a, w_b, w_c = stacked_slices(w_ptr, j0, H, 4, BH, KA, KB, KC)
    h_own = load_rows(h0_ptr, H, rows, rmask, jj, H)  # this program's units of h, fp32
    c = load_rows(c0_ptr, H, rows, rmask, jj, H)
    cp = load_cell_params(cp_ptr, jj, H, HAS_CELL_PARAMS, CP_ROWS)
    hcur = hbuf_ptr  # h_{t-1} and h_t, swapped after each step
    hnxt = hbuf_ptr + B * H
    xi, xf, xg, xo = _x_gates(x_ptr + time_index(0, T, REVERSE) * sxt, sxb, rows, rmask, jj, H)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        # h_{t-1} (in w_hh's dtype) times the slice
        p_i, p_f, p_g, p_o = persistent_product(hcur, w_a, w_b, w_c, H, rows, rmask, BB, BH, KA, KB, KC, PRECISION)
        c, m = _lstm_step_x(
            gates_ptr + t * B * 4 * H,
            cs_ptr + t * B * H,
            rows,
            rmask,
            jj,
            H,
            a2,
            xi + p_i,
            xf + p_f,
            xg + p_g,
            xo + p_o,
            c,
            cp,
            CELL,
        )
        h_own = tl.where(a2, m, h_own)
        store_rows(hnxt, H, rows, rmask, jj, H, h_own)
        store_rows(y_ptr + t * B * H, H, rows, rmask, jj, H, tl.where(a2, m, 0.0))
        # the next step's input gates (x_proj is ready from the start), loaded before the
        # barrier so their latency overlaps the wait; the last step reloads its own
        t_next = time_index(tl.minimum(s + 1, T - 1), T, REVERSE)
        xi, xf, xg, xo = _x_gates(x_ptr + t_next * sxt, sxb, rows, rmask, jj, H)
        grid_barrier(count_ptr, err_ptr, max_polls, s)
        hcur, hnxt = hnxt, hcur
    store_rows(hn_ptr, H, rows, rmask, jj, H, h_own)
    store_rows(cn_ptr, H, rows, rmask, jj, H, c)


@triton.jit
def lstm_bwd_persistent_kernel(
    dy_ptr,  # (T, B, H) gradient of y, contiguous
    dhn_ptr,
    dcn_ptr,  # (B, H), (B, H)
    w_ptr,  # w_hh (4H, H) contiguous
    c0_ptr,  # (B, H)
    gates_ptr,
    cs_ptr,  # forward workspace, fp32
    cp_ptr,  # (CP_ROWS, H) fp32 per-unit cell parameters, when HAS_CELL_PARAMS
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    dg_ptr,  # out (T, B, 4H) fp32, also how programs exchange dgates
    dh0_ptr,
    dc0_ptr,  # out (B, H) fp32
    count_ptr,  # (n_b,) int32 zeros
    err_ptr,  # (1,) int32 zero: grid_barrier's error flag (1 + the step it gave up at)
    max_polls,  # grid_barrier's bound on a wait
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    CELL_BACKWARD: tl.constexpr,
    HAS_CELL_PARAMS: tl.constexpr,
    CP_ROWS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    KS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    j0 = tl.program_id(1) * BH
    own = rmask[:, None] & (jj < H)[None, :]
    # this program's columns of W_hh per gate, [k, j] = W_hh[n*H + k, j0 + j], in KS parts
    w_i = split_tile(w_ptr, 0, j0, H, KS, BK // KS, BH)
    w_f = split_tile(w_ptr, 1, j0, H, KS, BK // KS, BH)
    w_g = split_tile(w_ptr, 2, j0, H, KS, BK // KS, BH)
    w_o = split_tile(w_ptr, 3, j0, H, KS, BK // KS, BH)
    # dh crosses steps in dh0 (B, H), which keeps the pointwise math out of the carry's layout
    store_rows(dh0_ptr, H, rows, rmask, jj, H, load_rows(dhn_ptr, H, rows, rmask, jj, H))
    dc = load_rows(dcn_ptr, H, rows, rmask, jj, H)
    cp = load_cell_params(cp_ptr, jj, H, HAS_CELL_PARAMS, CP_ROWS)
    off = rows[:, None] * H + jj[None, :]
    for s in range(T):
        tl.debug_barrier()
        dh = load_rows(dh0_ptr, H, rows, rmask, jj, H)
        fs = T - 1 - s
        t = time_index(fs, T, REVERSE)
        prev = tl.minimum(tl.maximum(time_index(fs - 1, T, REVERSE), 0), T - 1)  # unused at fs=0
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        dm = dh + load_rows(dy_ptr + t * B * H, H, rows, rmask, jj, H)
        gt = gates_ptr + t * B * 4 * H
        first = tl.full((1, BH), fs, tl.int32) == 0
        c_prev = tl.load(cs_ptr + prev * B * H + off, mask=own & ~first, other=0.0) + tl.load(
            c0_ptr + off, mask=own & first, other=0.0
        ).to(tl.float32)
        di, df, dg, do, dc_prev = CELL_BACKWARD(
            load_rows(gt, 4 * H, rows, rmask, jj, H),
            load_rows(gt + H, 4 * H, rows, rmask, jj, H),
            load_rows(gt + 2 * H, 4 * H, rows, rmask, jj, H),
            load_rows(gt + 3 * H, 4 * H, rows, rmask, jj, H),
            load_rows(cs_ptr + t * B * H, H, rows, rmask, jj, H),
            c_prev,
            dm,
            dc,
            cp,
        )
        dgt = dg_ptr + t * B * 4 * H
        _store_gates(dgt, rows, rmask, jj, H, a2, di, df, dg, do)
        dc = tl.where(a2, dc_prev, dc)
        grid_barrier(count_ptr, err_ptr, max_polls, s)
        # every program's dgates columns of step t are written: dh_{t-1} for own columns
        acc = split_zeros(KS, BB, BH)
        acc = split_dot(acc, dgt, 4 * H, rows, rmask, H, w_i, KS, BK // KS, PRECISION)
        acc = split_dot(acc, dgt + H, 4 * H, rows, rmask, H, w_f, KS, BK // KS, PRECISION)
        acc = split_dot(acc, dgt + 2 * H, 4 * H, rows, rmask, H, w_g, KS, BK // KS, PRECISION)
        acc = split_dot(acc, dgt + 3 * H, 4 * H, rows, rmask, H, w_o, KS, BK // KS, PRECISION)
        store_rows(dh0_ptr, H, rows, rmask, jj, H, tl.where(a2, split_total(acc, KS), dh))
    store_rows(dc0_ptr, H, rows, rmask, jj, H, dc)


# ---------------------------------------------------------------------------------------
# Launchers: which tensors each kernel takes; the shape, grids and blocks come from launch.py
# ---------------------------------------------------------------------------------------
LSTM_CELL = (_lstm_cell, _lstm_cell_backward)


def _cell_args(cell, cell_params, H, device, backward):
    """The cell arguments of every LSTM kernel: the forward (or backward) helper of ``cell``
    (a pair like LSTM_CELL) and its per-unit parameters ``cell_params`` ((n, H), or None),
    zero-padded to a power-of-two row count as fp32 for load_cell_params."""
    out = {"CELL_BACKWARD" if backward else "CELL": cell[1 if backward else 0]}
    if cell_params is None:
        return dict(out, cp_ptr=torch.empty(1, device=device), HAS_CELL_PARAMS=False, CP_ROWS=1)
    n = cell_params.shape[0]
    if cell_params.dim() != 2 or cell_params.shape[1] != H:
        raise ValueError(f"cell parameters must be (n, {H}), got {tuple(cell_params.shape)}")
    rows = triton.next_power_of_2(n)
    cp = torch.zeros(rows, H, device=device, dtype=torch.float32)
    cp[:n] = cell_params
    return dict(out, cp_ptr=cp, HAS_CELL_PARAMS=True, CP_ROWS=rows)


@step_graphs
@step_fallback
def forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, precision, cell=LSTM_CELL, cell_params=None):
    """-> y (T, B, P) and h_n (B, P), c_n (B, H) in the input dtype; gates (T, B, 4H), cs (T, B, H) fp32.
    ``cell``: (forward, backward) @triton.jit helpers with _lstm_cell's interface (an
    LSTM-shaped cell), ``cell_params`` its per-unit parameters (n, H) or None."""
    T, B, G = x_proj.shape
    H, P = G // 4, w_hh.shape[1]
    proj = w_hr is not None
    x_proj = kernel_input(x_proj)
    dev, f32, dtype = x_proj.device, torch.float32, x_proj.dtype
    y = alloc(T, B, P, device=dev, dtype=dtype)
    gates = alloc(T, B, G, device=dev, dtype=f32)
    cs = alloc(T, B, H, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return y, h0.clone(), c0.clone(), gates, cs
    w_hh, c0 = w_hh.contiguous(), c0.contiguous()
    w_hr = w_hr.contiguous() if proj else w_hh  # any valid pointer when unused
    lens = lengths if lengths is not None else cs
    flags = dict(HAS_LENGTHS=lengths is not None, PRECISION=precision)
    cellargs = _cell_args(cell, cell_params, H, dev, backward=False)
    p = plan(4, H, P, proj, w_hh.element_size(), B, dev, row=x_proj.stride(1))
    # h_{t-1} and h_t of the step and persistent kernels ([0] starts as h0); h_n = hbuf[T % 2]
    hbuf = alloc(2, B, P, device=dev, dtype=f32)
    hbuf[0].copy_(h0)
    c_n = alloc(B, H, device=dev, dtype=f32)

    def sequence():
        launch(
            lstm_fwd_seq_kernel,
            p,
            x_ptr=x_proj,
            sxt=x_proj.stride(0),
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            wr_ptr=w_hr,
            h0_ptr=h0.contiguous(),
            c0_ptr=c0,
            len_ptr=lens,
            y_ptr=y,
            gates_ptr=gates,
            cs_ptr=cs,
            hn_ptr=hbuf[T % 2],
            cn_ptr=c_n,
            T=T,
            B=B,
            H=H,
            P=P,
            REVERSE=reverse,
            HAS_PROJ=proj,
            **flags,
            **cellargs,
        )

    def persistent():
        # h_t crosses programs in W_hh's dtype, the precision of the product it feeds; each
        # program keeps its own units in fp32 and writes them to hbuf[T % 2] (h_n) at the end
        hx = alloc(2, B, H, device=dev, dtype=w_hh.dtype)
        hx[0].copy_(h0)
        launch_persistent(
            lstm_fwd_persistent_kernel,
            p,
            x_ptr=x_proj,
            sxt=x_proj.stride(0),
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            h0_ptr=h0.contiguous(),
            c0_ptr=c0,
            len_ptr=lens,
            y_ptr=y,
            gates_ptr=gates,
            cs_ptr=cs,
            hbuf_ptr=hx,
            hn_ptr=hbuf[T % 2],
            cn_ptr=c_n,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
            **cellargs,
        )

    mbuf = alloc(B, H, device=dev, dtype=f32) if proj and p.shape == "step" else hbuf  # m_t before W_hr

    def step(s, t, prev):
        hprev, hnxt = hbuf[s % 2], hbuf[(s + 1) % 2]
        launch(
            lstm_fwd_step_kernel,
            p,
            "H",
            x_ptr=x_proj[t],
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            hprev_ptr=hprev,
            cprev_ptr=c0 if prev < 0 else cs[prev],
            len_ptr=lens,
            t=t,
            gates_ptr=gates[t],
            c_ptr=cs[t],
            m_ptr=mbuf,
            hnxt_ptr=hnxt,
            y_ptr=y[t],
            B=B,
            H=H,
            P=P,
            HAS_PROJ=proj,
            **flags,
            **cellargs,
        )
        if proj:
            launch(
                lstm_proj_step_kernel,
                p,
                "P",
                m_ptr=mbuf,
                wr_ptr=w_hr,
                hprev_ptr=hprev,
                len_ptr=lens,
                t=t,
                hnxt_ptr=hnxt,
                y_ptr=y[t],
                B=B,
                H=H,
                P=P,
                **flags,
            )
        if s == T - 1:  # the step kernels carry c through cs
            c_n.copy_(cs[t])

    run(p, T, reverse, backward=False, sequence=sequence, step=step, persistent=persistent)
    return y, hbuf[T % 2].to(dtype), c_n.to(dtype), gates, cs


@step_graphs
@step_fallback
def backward(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, cs, lengths, reverse, precision, cell=LSTM_CELL, cell_params=None):
    """-> dx_proj (T, B, 4H), dh0 (B, P), dc0 (B, H), dh_out (T, B, P) (with w_hr; else an
    empty (0,) tensor), all fp32."""
    T, B, G = gates.shape
    H, P = G // 4, w_hh.shape[1]
    proj = w_hr is not None
    dev, f32 = dy.device, torch.float32
    dg = alloc(T, B, G, device=dev, dtype=f32)
    dhout = alloc(T, B, P, device=dev, dtype=f32) if proj else torch.empty(0, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return dg, dh_n.to(f32, copy=True), dc_n.to(f32, copy=True), dhout
    dy, dh_n, dc_n, w_hh, c0 = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), w_hh.contiguous(), c0.contiguous()
    w_hr = w_hr.contiguous() if proj else w_hh  # any valid pointer when unused
    lens = lengths if lengths is not None else dg
    flags = dict(HAS_LENGTHS=lengths is not None, PRECISION=precision)
    cellargs = _cell_args(cell, cell_params, H, dev, backward=True)
    p = plan(4, H, P, proj, w_hh.element_size(), B, dev)
    dh = alloc(B, P, device=dev, dtype=f32)
    dc = alloc(B, H, device=dev, dtype=f32)

    def sequence():
        launch(
            lstm_bwd_seq_kernel,
            p,
            dy_ptr=dy,
            dhn_ptr=dh_n,
            dcn_ptr=dc_n,
            w_ptr=w_hh,
            wr_ptr=w_hr,
            c0_ptr=c0,
            gates_ptr=gates,
            cs_ptr=cs,
            len_ptr=lens,
            dg_ptr=dg,
            dhout_ptr=dhout if proj else dg,
            dh0_ptr=dh,
            dc0_ptr=dc,
            T=T,
            B=B,
            H=H,
            P=P,
            REVERSE=reverse,
            HAS_PROJ=proj,
            **flags,
            **cellargs,
        )

    def persistent():
        launch_persistent(
            lstm_bwd_persistent_kernel,
            p,
            dy_ptr=dy,
            dhn_ptr=dh_n,
            dcn_ptr=dc_n,
            w_ptr=w_hh,
            c0_ptr=c0,
            gates_ptr=gates,
            cs_ptr=cs,
            len_ptr=lens,
            dg_ptr=dg,
            dh0_ptr=dh,
            dc0_ptr=dc,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
            **cellargs,
        )

    dt = alloc(B, P, device=dev, dtype=f32) if proj and p.shape == "step" else dh  # dh + dy[t] before W_hr

    after = []  # the time index of the step undone last: its carry is fused into the next launch

    def step(s, t, prev):
        if s == T - 1:  # the first step undone: the step kernels carry dh, dc in place from dh_n, dc_n
            dh.copy_(dh_n)
            dc.copy_(dc_n)
        fuse = not proj and bool(after)  # without a projection, carry_dh runs inside lstm_bwd_step
        if proj:
            launch(
                lstm_dt_step_kernel,
                p,
                "P",
                dh_ptr=dh,
                dy_ptr=dy[t],
                len_ptr=lens,
                t=t,
                dt_ptr=dt,
                dhout_ptr=dhout[t],
                B=B,
                P=P,
                HAS_LENGTHS=lengths is not None,
            )
        launch(
            lstm_bwd_step_kernel,
            p,
            "H",
            dh_ptr=dh,
            dy_ptr=dy[t],
            dt_ptr=dt,
            wr_ptr=w_hr,
            gates_ptr=gates[t],
            c_ptr=cs[t],
            cprev_ptr=c0 if prev < 0 else cs[prev],
            dc_ptr=dc,
            len_ptr=lens,
            t=t,
            dg_ptr=dg[t],
            dga_ptr=dg[after[0]] if fuse else dg[t],
            w_ptr=w_hh,
            t_after=after[0] if fuse else t,
            B=B,
            H=H,
            P=P,
            HAS_PROJ=proj,
            CARRY=fuse,
            **flags,
            **cellargs,
        )
        if proj or s == 0:  # dh0 after the last step undone
            carry_dh(p, dg[t], w_hh, dh, None, lens, lengths is not None, t, precision)
        after[:] = [t]

    run(p, T, reverse, backward=True, sequence=sequence, step=step, persistent=persistent)
    return dg, dh, dc, dhout
