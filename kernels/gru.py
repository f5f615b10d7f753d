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

from ._common import (BLOCK_B, PERSISTENT_WARPS, active_rows, alloc, carry_dh, gate_tile, gate_tile_t,
                      grid_barrier, kernel_shape, load_rows, load_rows_l2, matmul_rows, mm, persistent_grid,
                      pow2_block, program_tile, sigmoid, step_grid, step_index, store_rows, tanh, time_steps,
                      warps_for)


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
    r, z, n, hn, h = _gru_cell(load_rows(x_ptr, sxb, rows, rmask, jj, H),
                               load_rows(x_ptr + H, sxb, rows, rmask, jj, H),
                               load_rows(x_ptr + 2 * H, sxb, rows, rmask, jj, H),
                               ghr, ghz, ghn, b_hn, h_prev)
    store_rows(acts_ptr, 4 * H, rows, rmask, jj, H, tl.where(a2, r, 0.0))
    store_rows(acts_ptr + H, 4 * H, rows, rmask, jj, H, tl.where(a2, z, 0.0))
    store_rows(acts_ptr + 2 * H, 4 * H, rows, rmask, jj, H, tl.where(a2, n, 0.0))
    store_rows(acts_ptr + 3 * H, 4 * H, rows, rmask, jj, H, tl.where(a2, hn, 0.0))
    return h


@triton.jit
def _gru_step_backward(acts_ptr, hprev_ptr, dh, rows, rmask, jj, H, a2, dx_ptr, dgh_ptr):
    """Cell backward of one step: writes dx[t] and dgh[t] row blocks (zero when inactive)
    and returns (dar, daz, dan*r, dh*z) for the dh carry."""
    dar, daz, dan, dgn, dd = _gru_cell_backward(
        load_rows(acts_ptr, 4 * H, rows, rmask, jj, H), load_rows(acts_ptr + H, 4 * H, rows, rmask, jj, H),
        load_rows(acts_ptr + 2 * H, 4 * H, rows, rmask, jj, H), load_rows(acts_ptr + 3 * H, 4 * H, rows, rmask, jj, H),
        load_rows(hprev_ptr, H, rows, rmask, jj, H), dh)
    dar = tl.where(a2, dar, 0.0)
    daz = tl.where(a2, daz, 0.0)
    dgn = tl.where(a2, dgn, 0.0)
    store_rows(dx_ptr, 3 * H, rows, rmask, jj, H, dar)
    store_rows(dx_ptr + H, 3 * H, rows, rmask, jj, H, daz)
    store_rows(dx_ptr + 2 * H, 3 * H, rows, rmask, jj, H, tl.where(a2, dan, 0.0))
    store_rows(dgh_ptr, 3 * H, rows, rmask, jj, H, dar)
    store_rows(dgh_ptr + H, 3 * H, rows, rmask, jj, H, daz)
    store_rows(dgh_ptr + 2 * H, 3 * H, rows, rmask, jj, H, dgn)
    return dar, daz, dgn, dd


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
    x_ptr, sxt, sxb,        # x_proj (T, B, 3H); strides of t and b, last dim contiguous
    w_ptr,                  # w_hh (3H, H) contiguous
    bhn_ptr,                # b_hn (H,), when HAS_BHN
    h0_ptr,                 # (B, H)
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,                  # out (T, B, H), input dtype
    acts_ptr,               # out workspace (T, B, 4H) fp32: r, z, n, hn
    hn_ptr,                 # out (B, H) fp32: final state
    T, B, H,
    REVERSE: tl.constexpr, HAS_BHN: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    w_r = gate_tile_t(w_ptr, 0, 0, H, H, BH, BH)  # [k, j] = W_hh[n*H + j, k]
    w_z = gate_tile_t(w_ptr, 1, 0, H, H, BH, BH)
    w_n = gate_tile_t(w_ptr, 2, 0, H, H, BH, BH)
    b_hn = _b_hn(bhn_ptr, jj, H, HAS_BHN, BH)
    h = load_rows(h0_ptr, H, rows, rmask, jj, H)
    for s in range(0, T):
        t = step_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        h_new = _gru_step_math(x_ptr + t * sxt, sxb, acts_ptr + t * B * 4 * H, rows, rmask, jj, H, a2,
                               mm(h, w_r, PRECISION), mm(h, w_z, PRECISION),
                               mm(h, w_n, PRECISION), b_hn, h)
        h = tl.where(a2, h_new, h)
        store_rows(y_ptr + t * B * H, H, rows, rmask, jj, H, tl.where(a2, h_new, 0.0))
    store_rows(hn_ptr, H, rows, rmask, jj, H, h)


@triton.jit
def gru_bwd_seq_kernel(
    dy_ptr, dhn_ptr,        # (T, B, H), (B, H)
    w_ptr,                  # w_hh (3H, H) contiguous
    acts_ptr,               # forward workspace (T, B, 4H) fp32
    hprev_ptr,              # (T, B, H) fp32: the state each step started from
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    dx_ptr, dgh_ptr,        # out (T, B, 3H) fp32: d x_proj, d(h_prev @ W_hh^T)
    dh0_ptr,                # out (B, H) fp32
    T, B, H,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)  # one column tile: the whole hidden width
    w_r = gate_tile(w_ptr, 0, 0, H, H, BH, BH)  # [j, k] = W_hh[n*H + j, k]
    w_z = gate_tile(w_ptr, 1, 0, H, H, BH, BH)
    w_n = gate_tile(w_ptr, 2, 0, H, H, BH, BH)
    dh = load_rows(dhn_ptr, H, rows, rmask, jj, H)
    for s in range(0, T):
        t = step_index(T - 1 - s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        dht = dh + load_rows(dy_ptr + t * B * H, H, rows, rmask, jj, H)
        dar, daz, dgn, dd = _gru_step_backward(acts_ptr + t * B * 4 * H, hprev_ptr + t * B * H, dht, rows, rmask,
                                               jj, H, a2, dx_ptr + t * B * 3 * H, dgh_ptr + t * B * 3 * H)
        dh_prev = (dd + mm(dar, w_r, PRECISION) + mm(daz, w_z, PRECISION)
                   + mm(dgn, w_n, PRECISION))
        dh = tl.where(a2, dh_prev, dh)
    store_rows(dh0_ptr, H, rows, rmask, jj, H, dh)


# ---------------------------------------------------------------------------------------
# Step kernels: one launch per time step, grid (batch blocks, hidden tiles)
# ---------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["t"])
def gru_fwd_step_kernel(
    x_ptr, sxb,             # x_proj[t] (B, 3H), row stride sxb, last dim contiguous
    w_ptr, bhn_ptr,         # w_hh (3H, H) contiguous; b_hn (H,) when HAS_BHN
    hprev_ptr,              # h_{t-1} (B, H) fp32
    len_ptr, t,
    acts_ptr,               # out acts[t] (B, 4H) fp32
    hnxt_ptr, y_ptr,        # out h_t (B, H) fp32, y[t] (B, H)
    B, H,
    HAS_BHN: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    jm = jj < H
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    zero = tl.zeros((BB, BH), tl.float32)
    ghr = matmul_rows(zero, hprev_ptr, H, rows, rmask, H, w_ptr, 1, H, jj, jm, BK, PRECISION)
    ghz = matmul_rows(zero, hprev_ptr, H, rows, rmask, H, w_ptr + H * H, 1, H, jj, jm, BK, PRECISION)
    ghn = matmul_rows(zero, hprev_ptr, H, rows, rmask, H, w_ptr + 2 * H * H, 1, H, jj, jm, BK, PRECISION)
    h_prev = load_rows(hprev_ptr, H, rows, rmask, jj, H)
    h = _gru_step_math(x_ptr, sxb, acts_ptr, rows, rmask, jj, H, a2, ghr, ghz, ghn,
                       _b_hn(bhn_ptr, jj, H, HAS_BHN, BH), h_prev)
    store_rows(hnxt_ptr, H, rows, rmask, jj, H, tl.where(a2, h, h_prev))
    store_rows(y_ptr, H, rows, rmask, jj, H, tl.where(a2, h, 0.0))


@triton.jit(do_not_specialize=["t"])
def gru_bwd_step_kernel(
    dh_ptr, dy_ptr,         # carried dh (B, H) fp32; dy[t] (B, H)
    acts_ptr, hprev_ptr,    # acts[t] (B, 4H), h_prev[t] (B, H); fp32
    len_ptr, t,
    dx_ptr, dgh_ptr,        # out dx[t], dgh[t] (B, 3H) fp32
    dd_ptr,                 # out (B, H) fp32: dh*z, the direct part of dh_{t-1}
    B, H,
    HAS_LENGTHS: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
    dh = load_rows(dh_ptr, H, rows, rmask, jj, H) + load_rows(dy_ptr, H, rows, rmask, jj, H)
    _, _, _, dd = _gru_step_backward(acts_ptr, hprev_ptr, dh, rows, rmask, jj, H, a2, dx_ptr, dgh_ptr)
    store_rows(dd_ptr, H, rows, rmask, jj, H, dd)


# ---------------------------------------------------------------------------------------
# Persistent kernels: programs tile batch x hidden and keep their three W_hh slices on chip
# for all T steps; one grid barrier per step among the programs of a batch block (as in
# lstm.py: h exchanged through a double-buffered global array forward, dgh backward).
# ---------------------------------------------------------------------------------------
@triton.jit
def gru_fwd_persistent_kernel(
    x_ptr, sxt, sxb,        # x_proj (T, B, 3H); strides of t and b, last dim contiguous
    w_ptr, bhn_ptr,         # w_hh (3H, H) contiguous; b_hn (H,) when HAS_BHN
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    y_ptr,                  # out (T, B, H), input dtype
    acts_ptr,               # out workspace (T, B, 4H) fp32
    hbuf_ptr,               # (2, B, H) fp32: h exchanged between programs; [0] holds h0
    count_ptr,              # (n_b,) int32 zeros: barrier counter of each batch block
    T, B, H,
    REVERSE: tl.constexpr, HAS_BHN: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    j0 = tl.program_id(1) * BH
    kk = tl.arange(0, BK)  # the whole state row
    # this program's W_hh^T slice per gate, [k, j] = W_hh[n*H + j0 + j, k]
    w_r = gate_tile_t(w_ptr, 0, j0, H, H, BK, BH)
    w_z = gate_tile_t(w_ptr, 1, j0, H, H, BK, BH)
    w_n = gate_tile_t(w_ptr, 2, j0, H, H, BK, BH)
    b_hn = _b_hn(bhn_ptr, jj, H, HAS_BHN, BH)
    for s in range(0, T):
        t = step_index(s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        hcur = hbuf_ptr + (s % 2) * B * H
        h = load_rows_l2(hcur, H, rows, rmask, kk, H)
        h_prev = load_rows_l2(hcur, H, rows, rmask, jj, H)
        h_new = _gru_step_math(x_ptr + t * sxt, sxb, acts_ptr + t * B * 4 * H, rows, rmask, jj, H, a2,
                               mm(h, w_r, PRECISION), mm(h, w_z, PRECISION),
                               mm(h, w_n, PRECISION), b_hn, h_prev)
        store_rows(hbuf_ptr + ((s + 1) % 2) * B * H, H, rows, rmask, jj, H, tl.where(a2, h_new, h_prev))
        store_rows(y_ptr + t * B * H, H, rows, rmask, jj, H, tl.where(a2, h_new, 0.0))
        grid_barrier(count_ptr, s)


@triton.jit
def gru_bwd_persistent_kernel(
    dy_ptr, dhn_ptr,        # (T, B, H), (B, H)
    w_ptr,                  # w_hh (3H, H) contiguous
    acts_ptr, hprev_ptr,    # forward workspace (T, B, 4H), states each step started from (T, B, H); fp32
    len_ptr,                # lengths (B,) int64, when HAS_LENGTHS
    dx_ptr, dgh_ptr,        # out (T, B, 3H) fp32; dgh is also how programs exchange the step's gradient
    dh0_ptr,                # out (B, H) fp32
    count_ptr,              # (n_b,) int32 zeros
    T, B, H,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, jj = program_tile(B, BB, BH)
    j0 = tl.program_id(1) * BH
    kk = tl.arange(0, BK)  # the whole state row
    # this program's columns of W_hh per gate, [k, j] = W_hh[n*H + k, j0 + j]
    w_r = gate_tile(w_ptr, 0, j0, H, H, BK, BH)
    w_z = gate_tile(w_ptr, 1, j0, H, H, BK, BH)
    w_n = gate_tile(w_ptr, 2, j0, H, H, BK, BH)
    dh = load_rows(dhn_ptr, H, rows, rmask, jj, H)
    for s in range(0, T):
        t = step_index(T - 1 - s, T, REVERSE)
        a2 = active_rows(t, rows, rmask, len_ptr, HAS_LENGTHS)[:, None]
        dht = dh + load_rows(dy_ptr + t * B * H, H, rows, rmask, jj, H)
        dgt = dgh_ptr + t * B * 3 * H
        _, _, _, dd = _gru_step_backward(acts_ptr + t * B * 4 * H, hprev_ptr + t * B * H, dht, rows, rmask, jj, H,
                                         a2, dx_ptr + t * B * 3 * H, dgt)
        grid_barrier(count_ptr, s)
        # every program's dgh columns of step t are written: dh_{t-1} for own columns
        dh_prev = (dd + mm(load_rows_l2(dgt, 3 * H, rows, rmask, kk, H), w_r, PRECISION)
                   + mm(load_rows_l2(dgt + H, 3 * H, rows, rmask, kk, H), w_z, PRECISION)
                   + mm(load_rows_l2(dgt + 2 * H, 3 * H, rows, rmask, kk, H), w_n, PRECISION))
        dh = tl.where(a2, dh_prev, dh)
    store_rows(dh0_ptr, H, rows, rmask, jj, H, dh)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------
def forward(x_proj, w_hh, b_hn, h0, lengths, reverse, precision):
    T, B, G = x_proj.shape
    H = G // 3
    if x_proj.stride(2) != 1:
        x_proj = x_proj.contiguous()
    dev, f32, dtype = x_proj.device, torch.float32, x_proj.dtype
    y = alloc(T, B, H, device=dev, dtype=dtype)
    acts = alloc(T, B, 4 * H, device=dev, dtype=f32)
    if B == 0:
        return y, h0.clone(), acts
    w_hh = w_hh.contiguous()
    bhn = b_hn.contiguous() if b_hn is not None else acts
    lens = lengths if lengths is not None else acts
    flags = dict(HAS_BHN=b_hn is not None, HAS_LENGTHS=lengths is not None, PRECISION=precision)
    shape = kernel_shape(3, H, H, False, w_hh.element_size())
    grid = persistent_grid(B, H, 3, dev, w_hh.element_size()) if shape == "persistent" else None
    if grid is not None:
        n_b, n_h, BH = grid
        hbuf = alloc(2, B, H, device=dev, dtype=f32)
        hbuf[0].copy_(h0)
        gru_fwd_persistent_kernel[(n_b, n_h)](
            x_proj, x_proj.stride(0), x_proj.stride(1), w_hh, bhn, lens, y, acts, hbuf,
            torch.zeros(n_b, device=dev, dtype=torch.int32), T, B, H, REVERSE=reverse, **flags,
            BB=BLOCK_B, BH=BH, BK=pow2_block(H, hi=1 << 30), num_warps=PERSISTENT_WARPS)
        return y, hbuf[T % 2].to(dtype), acts
    if shape == "sequence":
        h_n = alloc(B, H, device=dev, dtype=f32)
        gru_fwd_seq_kernel[(triton.cdiv(B, BLOCK_B),)](
            x_proj, x_proj.stride(0), x_proj.stride(1), w_hh, bhn, h0.contiguous(), lens, y, acts, h_n,
            T, B, H, REVERSE=reverse, **flags, BB=BLOCK_B, BH=pow2_block(H, hi=1 << 30),
            num_warps=warps_for(3, H, H, False, w_hh.element_size()))
        return y, h_n.to(dtype), acts
    BH = pow2_block(H)
    hbuf = alloc(2, B, H, device=dev, dtype=f32)
    hbuf[0].copy_(h0)
    for s, t, _ in time_steps(T, reverse):
        gru_fwd_step_kernel[step_grid(B, H, BH)](
            x_proj[t], x_proj.stride(1), w_hh, bhn, hbuf[s % 2], lens, t, acts[t], hbuf[(s + 1) % 2], y[t],
            B, H, **flags, BB=BLOCK_B, BH=BH, BK=32)
    return y, hbuf[T % 2].to(dtype), acts


def backward(dy, dh_n, w_hh, b_hn, h0, y, acts, lengths, reverse, precision, h_prev_of):
    T, B, H4 = acts.shape
    H = H4 // 4
    dev, f32, dtype = dy.device, torch.float32, dy.dtype
    hp = h_prev_of(y, h0, lengths, reverse).to(f32).contiguous()
    dx = alloc(T, B, 3 * H, device=dev, dtype=f32)
    dgh = alloc(T, B, 3 * H, device=dev, dtype=f32)
    dy, w_hh = dy.contiguous(), w_hh.contiguous()
    lens = lengths if lengths is not None else dx
    shape = kernel_shape(3, H, H, False, w_hh.element_size()) if B > 0 else "none"
    grid = persistent_grid(B, H, 3, dev, w_hh.element_size()) if shape == "persistent" else None
    if B == 0:
        dh = dh_n.to(f32)
    elif grid is not None:
        n_b, n_h, BH = grid
        dh = alloc(B, H, device=dev, dtype=f32)
        gru_bwd_persistent_kernel[(n_b, n_h)](
            dy, dh_n.contiguous(), w_hh, acts, hp, lens, dx, dgh, dh, torch.zeros(n_b, device=dev, dtype=torch.int32),
            T, B, H, REVERSE=reverse, HAS_LENGTHS=lengths is not None, PRECISION=precision,
            BB=BLOCK_B, BH=BH, BK=pow2_block(H, hi=1 << 30), num_warps=PERSISTENT_WARPS)
    elif shape == "sequence":
        dh = alloc(B, H, device=dev, dtype=f32)
        gru_bwd_seq_kernel[(triton.cdiv(B, BLOCK_B),)](
            dy, dh_n.contiguous(), w_hh, acts, hp, lens, dx, dgh, dh, T, B, H,
            REVERSE=reverse, HAS_LENGTHS=lengths is not None, PRECISION=precision,
            BB=BLOCK_B, BH=pow2_block(H, hi=1 << 30), num_warps=warps_for(3, H, H, False, w_hh.element_size()))
    else:
        BH = pow2_block(H)
        dh = dh_n.to(f32, copy=True).contiguous()
        dd = alloc(B, H, device=dev, dtype=f32)
        for _, t, _ in reversed(list(time_steps(T, reverse))):
            gru_bwd_step_kernel[step_grid(B, H, BH)](
                dh, dy[t], acts[t], hp[t], lens, t, dx[t], dgh[t], dd, B, H,
                HAS_LENGTHS=lengths is not None, BB=BLOCK_B, BH=BH)
            carry_dh(dgh[t], w_hh, dh, dd, lengths, t, precision)
    dw_hh = (dgh.reshape(T * B, 3 * H).t() @ hp.reshape(T * B, H)).to(dtype)
    db_hn = dgh[..., 2 * H:].sum((0, 1)).to(dtype) if b_hn is not None else None
    return dx.to(dtype), dw_hh, db_hn, dh.to(dtype)
