"""GRU recurrence in Triton (torch.nn's GRU: b_hn inside the reset product).

Same shapes as lstm.py: the sequence kernel keeps the three W_hh gate tiles and h on chip
for all T steps; the step kernels launch once per step over batch x hidden tiles, and the
backward carries dh with the shared ``carry_dh`` step (dh_{t-1} = dh*z + dgh @ W_hh); the
persistent kernels (opt-in) tile batch x hidden with a grid barrier per step.

Backward of one step (h_t = (1-z)*n + z*h_{t-1}, n = tanh(x_n + r*(gh_n + b_hn))):
    dan = dh*(1-z)*(1-n^2),  dar = dan*(gh_n + b_hn)*r(1-r),  daz = dh*(h_{t-1} - n)*z(1-z)
    d(gh) = [dar, daz, dan*r],  dh_{t-1} = dh*z + d(gh) @ W_hh
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
def _gru_step_math(x_ptr, sxb, acts_ptr, rows, rmask, jj, H, a2, ghr, ghz, ghn, b_hn, h_prev):
    """Cell of one step from x_proj[t] rows and the three recurrent products; writes the
    workspace row block acts[t] (r, z, n, hn; zero when inactive) and returns h_t."""
    xr, xz, xn = _x_gates(x_ptr, sxb, rows, rmask, jj, H)
    return _gru_step_x(acts_ptr, rows, rmask, jj, H, a2, xr, xz, xn, ghr, ghz, ghn, b_hn, h_prev)


@triton.jit
def _x_gates(x_ptr, sxb, rows, rmask, jj, H):
    """x_proj[t]'s three gate tiles on the units jj (rows at x_ptr, stride sxb), fp32."""
    return (
        load_rows(x_ptr, sxb, rows, rmask, jj, H),
        load_rows(x_ptr + H, sxb, rows, rmask, jj, H),
        load_rows(x_ptr + 2 * H, sxb, rows, rmask, jj, H),
    )


@triton.jit
def _gru_step_x(acts_ptr, rows, rmask, jj, H, a2, xr, xz, xn, ghr, ghz, ghn, b_hn, h_prev):
    """_gru_step_math from x_proj[t]'s gate tiles x*, already loaded."""
    r, z, n, hn, h = _gru_cell(xr, xz, xn, ghr, ghz, ghn, b_hn, h_prev)
    store_rows(acts_ptr, 4 * H, rows, rmask, jj, H, tl.where(a2, r, 0.0))
    store_rows(acts_ptr + H, 4 * H, rows, rmask, jj, H, tl.where(a2, z, 0.0))
    store_rows(acts_ptr + 2 * H, 4 * H, rows, rmask, jj, H, tl.where(a2, n, 0.0))
    store_rows(acts_ptr + 3 * H, 4 * H, rows, rmask, jj, H, tl.where(a2, hn, 0.0))
    return h


@triton.jit
def _store3(ptr, rows, rmask, jj, H, a, b, c):
    """Three (BB, BH) tiles into a (B, 3H) row block."""
    store_rows(ptr, 3 * H, rows, rmask, jj, H, a)
    store_rows(ptr + H, 3 * H, rows, rmask, jj, H, b)
    store_rows(ptr + 2 * H, 3 * H, rows, rmask, jj, H, c)


@triton.jit
def _gru_step_backward(acts_ptr, hprev_ptr, dh, rows, rmask, jj, H, a2, dx_ptr):
    """Cell backward of one step: writes the dx[t] row block (zero when inactive) and returns
    d(gh) = (dar, daz, dan*r), zero when inactive, and dh*z for the dh carry."""
    dar, daz, dan, dgn, dd = _gru_cell_backward(
        load_rows(acts_ptr, 4 * H, rows, rmask, jj, H),
        load_rows(acts_ptr + H, 4 * H, rows, rmask, jj, H),
        load_rows(acts_ptr + 2 * H, 4 * H, rows, rmask, jj, H),
        load_rows(acts_ptr + 3 * H, 4 * H, rows, rmask, jj, H),
        load_rows(hprev_ptr, H, rows, rmask, jj, H),
        dh,
    )
    dar = tl.where(a2, dar, 0.0)
    daz = tl.where(a2, daz, 0.0)
    _store3(dx_ptr, rows, rmask, jj, H, dar, daz, tl.where(a2, dan, 0.0))
    return dar, daz, tl.where(a2, dgn, 0.0), dd


@triton.jit
def _b_hn(bhn_ptr, jj, H, HAS_BHN: tl.constexpr, BH: tl.constexpr):
    """(1, BH) fp32: b_hn over the columns jj, or zeros without bias."""
    if HAS_BHN:
        b = tl.load(bhn_ptr + jj, mask=jj < H, other=0.0).to(tl.float32)[None, :]
    else:
        b = tl.zeros((1, BH), tl.float32)
    return b


# ---------------------------------------------------------------------------------------
# Sequence kernels: W_hh and h on chip for the whole sequence
# ---------------------------------------------------------------------------------------
@triton.jit
def gru_fwd_seq_kernel(
    x_ptr,
    sxt,
    sxb,  # x_proj (T, B, 3H); strides of t and b, last dim contiguous
    w_ptr,  # w_hh (3H, H) contiguous
    bhn_ptr,  # b_hn (H,), when HAS_BHN
    h0_ptr,  # (B, H)
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,  # out (T, B, H), input dtype
    acts_ptr,  # out workspace (T, B, 4H) fp32: r, z, n, hn
    hn_ptr,  # out (B, H) fp32: final state
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    w_r = gate_tile_t(w_ptr, 0, 0, H, H, BH, BH)  # [k, j] = W_hh[n*H + j, k]
    w_z = gate_tile_t(w_ptr, 1, 0, H, H, BH, BH)
    w_n = gate_tile_t(w_ptr, 2, 0, H, H, BH, BH)
    b_hn = _b_hn(bhn_ptr, jj, H, HAS_BHN, BH)
    h = load_rows(h0_ptr, H, rows, rmask, jj, H)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        h_new = _gru_step_math(
            x_ptr + t * sxt,
            sxb,
            acts_ptr + t * B * 4 * H,
            rows,
            rmask,
            jj,
            H,
            a2,
            mm(h, w_r, PRECISION),
            mm(h, w_z, PRECISION),
            mm(h, w_n, PRECISION),
            b_hn,
            h,
        )
        h = tl.where(a2, h_new, h)
        store_rows(y_ptr + t * B * H, H, rows, rmask, jj, H, tl.where(a2, h_new, 0.0))
    store_rows(hn_ptr, H, rows, rmask, jj, H, h)


@triton.jit
def gru_bwd_seq_kernel(
    dy_ptr,
    dhn_ptr,  # (T, B, H), (B, H)
    w_ptr,  # w_hh (3H, H) contiguous
    acts_ptr,  # forward workspace (T, B, 4H) fp32
    hprev_ptr,  # (T, B, H): the state each step started from
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    dx_ptr,  # out (T, B, 3H) fp32: d x_proj
    dh0_ptr,  # out (B, H) fp32
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
    w_r = gate_tile(w_ptr, 0, 0, H, H, BH, BH)  # [j, k] = W_hh[n*H + j, k]
    w_z = gate_tile(w_ptr, 1, 0, H, H, BH, BH)
    w_n = gate_tile(w_ptr, 2, 0, H, H, BH, BH)
    dh = load_rows(dhn_ptr, H, rows, rmask, jj, H)
    for s in range(T):
        t = time_index(T - 1 - s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        dht = dh + load_rows(dy_ptr + t * B * H, H, rows, rmask, jj, H)
        dar, daz, dgn, dd = _gru_step_backward(
            acts_ptr + t * B * 4 * H, hprev_ptr + t * B * H, dht, rows, rmask, jj, H, a2, dx_ptr + t * B * 3 * H
        )
        # this order of the sum: compiled for sm_90 (fp32, H=64) it takes 4 KB less shared
        # memory than dar, daz, dgn (python -m fastrnn.kernels.resources)
        dh_prev = dd + mm(dgn, w_n, PRECISION) + mm(dar, w_r, PRECISION) + mm(daz, w_z, PRECISION)
        dh = tl.where(a2, dh_prev, dh)
    store_rows(dh0_ptr, H, rows, rmask, jj, H, dh)


# ---------------------------------------------------------------------------------------
# Step kernels: one launch per time step, grid (batch blocks, hidden tiles)
# ---------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["t"])
def gru_fwd_step_kernel(
    x_ptr,
    sxb,  # x_proj[t] (B, 3H), row stride sxb, last dim contiguous
    w_ptr,
    bhn_ptr,  # w_hh (3H, H) contiguous; b_hn (H,) when HAS_BHN
    hprev_ptr,  # h_{t-1} (B, H) fp32
    len_ptr,
    t,
    acts_ptr,  # out acts[t] (B, 4H) fp32
    hnxt_ptr,
    y_ptr,  # out h_t (B, H) fp32, y[t] (B, H)
    B,
    H,
    HAS_BHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    jm = jj < H
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    zero = tl.zeros((BB, BH), tl.float32)
    ghr = matmul_rows(zero, hprev_ptr, H, rows, rmask, H, w_ptr, 1, H, jj, jm, BK, PRECISION)
    ghz = matmul_rows(zero, hprev_ptr, H, rows, rmask, H, w_ptr + H * H, 1, H, jj, jm, BK, PRECISION)
    ghn = matmul_rows(zero, hprev_ptr, H, rows, rmask, H, w_ptr + 2 * H * H, 1, H, jj, jm, BK, PRECISION)
    h_prev = load_rows(hprev_ptr, H, rows, rmask, jj, H)
    h = _gru_step_math(
        x_ptr, sxb, acts_ptr, rows, rmask, jj, H, a2, ghr, ghz, ghn, _b_hn(bhn_ptr, jj, H, HAS_BHN, BH), h_prev
    )
    store_rows(hnxt_ptr, H, rows, rmask, jj, H, tl.where(a2, h, h_prev))
    store_rows(y_ptr, H, rows, rmask, jj, H, tl.where(a2, h, 0.0))


@triton.jit(do_not_specialize=["t", "t_after"])
def gru_bwd_step_kernel(
    dh_ptr,
    dy_ptr,  # carried dh (B, H) fp32; dy[t] (B, H)
    acts_ptr,
    hprev_ptr,  # acts[t] (B, 4H) fp32, h_prev[t] (B, H)
    len_ptr,
    t,
    dx_ptr,
    dgh_ptr,  # out dx[t] (B, 3H) fp32; out (B, 3H) fp32 d(gh) for the carry
    dd_ptr,  # out (B, H) fp32: dh*z, the direct part of dh_{t-1}
    dgha_ptr,
    dda_ptr,  # d(gh) (B, 3H) and dh*z (B, H) of the step after t, when CARRY
    w_ptr,  # w_hh (3H, H) contiguous, when CARRY
    t_after,  # that step's time index, when CARRY
    B,
    H,
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
        # carry_dh of the step after t, fused: rows active there take dh*z + d(gh) @ W_hh on
        # this program's units, the others keep the gradient they carry. The same sum, in
        # the same order. d(gh) and dh*z are double-buffered: this launch writes the other.
        acc = load_rows(dda_ptr, H, rows, rmask, jj, H)
        acc = matmul_rows(acc, dgha_ptr, 3 * H, rows, rmask, 3 * H, w_ptr, H, 1, jj, jj < H, BK, PRECISION)
        dh = tl.where(active_rows(t_after, rows, rmask, len_ptr, HAS_LENGTHS)[:, None], acc, dh)
        store_rows(dh_ptr, H, rows, rmask, jj, H, dh)
    dh = dh + load_rows(dy_ptr, H, rows, rmask, jj, H)
    dar, daz, dgn, dd = _gru_step_backward(acts_ptr, hprev_ptr, dh, rows, rmask, jj, H, a2, dx_ptr)
    _store3(dgh_ptr, rows, rmask, jj, H, dar, daz, dgn)
    store_rows(dd_ptr, H, rows, rmask, jj, H, dd)


# ---------------------------------------------------------------------------------------
# Persistent kernels: programs tile batch x hidden and keep their three W_hh slices on chip
# for all T steps; one grid barrier per step among the programs of a batch block (as in
# lstm.py: h exchanged through a double-buffered global array forward, dgh backward).
# ---------------------------------------------------------------------------------------
@triton.jit
def gru_fwd_persistent_kernel(
    x_ptr,
    sxt,
    sxb,  # x_proj (T, B, 3H); strides of t and b, last dim contiguous
    w_ptr,
    bhn_ptr,  # w_hh (3H, H) contiguous; b_hn (H,) when HAS_BHN
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,  # out (T, B, H), input dtype
    acts_ptr,  # out workspace (T, B, 4H) fp32
    h0_ptr,  # (B, H)
    hbuf_ptr,  # (2, B, H) in w_hh's dtype: h exchanged between programs; [0] holds h0
    hn_ptr,  # out (B, H) fp32
    count_ptr,  # (n_b,) int32 zeros: barrier counter of each batch block
    err_ptr,  # (1,) int32 zero: grid_barrier's error flag (1 + the step it gave up at)
    max_polls,  # grid_barrier's bound on a wait
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
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
    w_a, w_b, w_c = stacked_slices(w_ptr, j0, H, 3, BH, KA, KB, KC)
    b_hn = _b_hn(bhn_ptr, jj, H, HAS_BHN, BH)
    h_own = load_rows(h0_ptr, H, rows, rmask, jj, H)  # this program's units of h, fp32
    hcur = hbuf_ptr  # h_{t-1} and h_t, swapped after each step
    hnxt = hbuf_ptr + B * H
    xr, xz, xn = _x_gates(x_ptr + time_index(0, T, REVERSE) * sxt, sxb, rows, rmask, jj, H)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        # h_{t-1} (in w_hh's dtype) times the slice
        p_r, p_z, p_n, _ = persistent_product(hcur, w_a, w_b, w_c, H, rows, rmask, BB, BH, KA, KB, KC, PRECISION)
        h_new = _gru_step_x(acts_ptr + t * B * 4 * H, rows, rmask, jj, H, a2, xr, xz, xn, p_r, p_z, p_n, b_hn, h_own)
        h_own = tl.where(a2, h_new, h_own)
        store_rows(hnxt, H, rows, rmask, jj, H, h_own)
        store_rows(y_ptr + t * B * H, H, rows, rmask, jj, H, tl.where(a2, h_new, 0.0))
        # the next step's input gates, loaded before the barrier so their latency overlaps
        # the wait; the last step reloads its own
        t_next = time_index(tl.minimum(s + 1, T - 1), T, REVERSE)
        xr, xz, xn = _x_gates(x_ptr + t_next * sxt, sxb, rows, rmask, jj, H)
        grid_barrier(count_ptr, err_ptr, max_polls, s)
        hcur, hnxt = hnxt, hcur
    store_rows(hn_ptr, H, rows, rmask, jj, H, h_own)


@triton.jit
def gru_bwd_persistent_kernel(
    dy_ptr,
    dhn_ptr,  # (T, B, H), (B, H)
    w_ptr,  # w_hh (3H, H) contiguous
    acts_ptr,
    hprev_ptr,  # forward workspace (T, B, 4H) fp32, states each step started from (T, B, H)
    len_ptr,  # lengths (B,) int64, when HAS_LENGTHS
    dx_ptr,  # out (T, B, 3H) fp32
    dgh_ptr,  # (T, B, 3H) fp32 scratch: d(gh) of each step, exchanged between programs.
    # A (2, B, 3H) double buffer would do (a program must pass the next
    # barrier before it reuses a slot), but compiled for sm_90 its index
    # cost 32 registers (bf16, H=64)
    dh0_ptr,  # out (B, H) fp32
    count_ptr,  # (n_b,) int32 zeros
    err_ptr,  # (1,) int32 zero: grid_barrier's error flag (1 + the step it gave up at)
    max_polls,  # grid_barrier's bound on a wait
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    KS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    j0 = tl.program_id(1) * BH
    # this program's columns of W_hh per gate, [k, j] = W_hh[n*H + k, j0 + j], in KS parts
    w_r = split_tile(w_ptr, 0, j0, H, KS, BK // KS, BH)
    w_z = split_tile(w_ptr, 1, j0, H, KS, BK // KS, BH)
    w_n = split_tile(w_ptr, 2, j0, H, KS, BK // KS, BH)
    # dh crosses steps in dh0 (B, H), which keeps the pointwise math out of the carry's layout
    store_rows(dh0_ptr, H, rows, rmask, jj, H, load_rows(dhn_ptr, H, rows, rmask, jj, H))
    for s in range(T):
        tl.debug_barrier()
        dh = load_rows(dh0_ptr, H, rows, rmask, jj, H)
        t = time_index(T - 1 - s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        dht = dh + load_rows(dy_ptr + t * B * H, H, rows, rmask, jj, H)
        dgt = dgh_ptr + t * B * 3 * H
        dar, daz, dgn, dd = _gru_step_backward(
            acts_ptr + t * B * 4 * H, hprev_ptr + t * B * H, dht, rows, rmask, jj, H, a2, dx_ptr + t * B * 3 * H
        )
        _store3(dgt, rows, rmask, jj, H, dar, daz, dgn)
        grid_barrier(count_ptr, err_ptr, max_polls, s)
        # every program's dgh columns of step t are written: dh_{t-1} for own columns
        acc = split_zeros(KS, BB, BH)
        acc = split_dot(acc, dgt, 3 * H, rows, rmask, H, w_r, KS, BK // KS, PRECISION)
        acc = split_dot(acc, dgt + H, 3 * H, rows, rmask, H, w_z, KS, BK // KS, PRECISION)
        acc = split_dot(acc, dgt + 2 * H, 3 * H, rows, rmask, H, w_n, KS, BK // KS, PRECISION)
        store_rows(dh0_ptr, H, rows, rmask, jj, H, tl.where(a2, dd + split_total(acc, KS), dh))


# ---------------------------------------------------------------------------------------
# Launchers: which tensors each kernel takes; the shape, grids and blocks come from launch.py
# ---------------------------------------------------------------------------------------
@step_graphs
@step_fallback
def forward(x_proj, w_hh, b_hn, h0, lengths, reverse, precision):
    """-> y (T, B, H), h_n (B, H) in the input dtype; acts (T, B, 4H) = r, z, n, hn fp32."""
    T, B, G = x_proj.shape
    H = G // 3
    x_proj = kernel_input(x_proj)
    dev, f32, dtype = x_proj.device, torch.float32, x_proj.dtype
    y = alloc(T, B, H, device=dev, dtype=dtype)
    acts = alloc(T, B, 4 * H, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return y, h0.clone(), acts
    w_hh = w_hh.contiguous()
    bhn = b_hn.contiguous() if b_hn is not None else acts  # any valid pointer when unused
    lens = lengths if lengths is not None else acts
    flags = dict(HAS_BHN=b_hn is not None, HAS_LENGTHS=lengths is not None, PRECISION=precision)
    p = plan(3, H, H, False, w_hh.element_size(), B, dev, row=max(4 * H, x_proj.stride(1)))  # acts: 4H
    # h_{t-1} and h_t of the step and persistent kernels ([0] starts as h0); h_n = hbuf[T % 2]
    hbuf = alloc(2, B, H, device=dev, dtype=f32)
    hbuf[0].copy_(h0)

    def sequence():
        launch(
            gru_fwd_seq_kernel,
            p,
            x_ptr=x_proj,
            sxt=x_proj.stride(0),
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            bhn_ptr=bhn,
            h0_ptr=h0.contiguous(),
            len_ptr=lens,
            y_ptr=y,
            acts_ptr=acts,
            hn_ptr=hbuf[T % 2],
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
        )

    def persistent():
        # h_t crosses programs in W_hh's dtype, the precision of the product it feeds; each
        # program keeps its own units in fp32 and writes them to hbuf[T % 2] (h_n) at the end
        hx = alloc(2, B, H, device=dev, dtype=w_hh.dtype)
        hx[0].copy_(h0)
        launch_persistent(
            gru_fwd_persistent_kernel,
            p,
            x_ptr=x_proj,
            sxt=x_proj.stride(0),
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            bhn_ptr=bhn,
            len_ptr=lens,
            y_ptr=y,
            acts_ptr=acts,
            h0_ptr=h0.contiguous(),
            hbuf_ptr=hx,
            hn_ptr=hbuf[T % 2],
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
        )

    def step(s, t, prev):
        launch(
            gru_fwd_step_kernel,
            p,
            "H",
            x_ptr=x_proj[t],
            sxb=x_proj.stride(1),
            w_ptr=w_hh,
            bhn_ptr=bhn,
            hprev_ptr=hbuf[s % 2],
            len_ptr=lens,
            t=t,
            acts_ptr=acts[t],
            hnxt_ptr=hbuf[(s + 1) % 2],
            y_ptr=y[t],
            B=B,
            H=H,
            **flags,
        )

    run(p, T, reverse, backward=False, sequence=sequence, step=step, persistent=persistent)
    return y, hbuf[T % 2].to(dtype), acts


@step_graphs
@step_fallback
def backward(dy, dh_n, w_hh, h_prev, acts, lengths, reverse, precision):
    """-> dx_proj (T, B, 3H) = [dar, daz, dan] and dh0 (B, H), fp32. h_prev (T, B, H): the
    state each step started from."""
    T, B, H4 = acts.shape
    H = H4 // 4
    dev, f32 = dy.device, torch.float32
    dx = alloc(T, B, 3 * H, device=dev, dtype=f32)
    if B == 0 or T == 0:
        return dx, dh_n.to(f32, copy=True)
    dy, dh_n, w_hh, h_prev = dy.contiguous(), dh_n.contiguous(), w_hh.contiguous(), h_prev.contiguous()
    lens = lengths if lengths is not None else dx
    flags = dict(HAS_LENGTHS=lengths is not None, PRECISION=precision)
    p = plan(3, H, H, False, w_hh.element_size(), B, dev, row=4 * H)  # acts: 4H
    dh = alloc(B, H, device=dev, dtype=f32)

    def sequence():
        launch(
            gru_bwd_seq_kernel,
            p,
            dy_ptr=dy,
            dhn_ptr=dh_n,
            w_ptr=w_hh,
            acts_ptr=acts,
            hprev_ptr=h_prev,
            len_ptr=lens,
            dx_ptr=dx,
            dh0_ptr=dh,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
        )

    def persistent():
        launch_persistent(
            gru_bwd_persistent_kernel,
            p,
            dy_ptr=dy,
            dhn_ptr=dh_n,
            w_ptr=w_hh,
            acts_ptr=acts,
            hprev_ptr=h_prev,
            len_ptr=lens,
            dx_ptr=dx,
            dgh_ptr=alloc(T, B, 3 * H, device=dev, dtype=f32),
            dh0_ptr=dh,
            T=T,
            B=B,
            H=H,
            REVERSE=reverse,
            **flags,
        )

    if p.shape == "step":  # d(gh) = [dar, daz, dan*r] and dh*z of a step, for the carry: [s % 2]
        dgh = alloc(2, B, 3 * H, device=dev, dtype=f32)
        dd = alloc(2, B, H, device=dev, dtype=f32)
    after = []  # the time index of the step undone last: its carry is fused into the next launch

    def step(s, t, prev):
        if s == T - 1:  # the first step undone: the step kernels carry dh in place from dh_n
            dh.copy_(dh_n)
        fuse, a = bool(after), (s + 1) % 2
        launch(
            gru_bwd_step_kernel,
            p,
            "H",
            dh_ptr=dh,
            dy_ptr=dy[t],
            acts_ptr=acts[t],
            hprev_ptr=h_prev[t],
            len_ptr=lens,
            t=t,
            dx_ptr=dx[t],
            dgh_ptr=dgh[s % 2],
            dd_ptr=dd[s % 2],
            dgha_ptr=dgh[a],
            dda_ptr=dd[a],
            w_ptr=w_hh,
            t_after=after[0] if fuse else t,
            B=B,
            H=H,
            CARRY=fuse,
            **flags,
        )
        if s == 0:  # dh0 after the last step undone
            carry_dh(p, dgh[0], w_hh, dh, dd[0], lens, lengths is not None, t, precision)
        after[:] = [t]

    run(p, T, reverse, backward=True, sequence=sequence, step=step, persistent=persistent)
    return dx, dh
