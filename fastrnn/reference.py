"""Pure-PyTorch reference cells and recurrences: the oracle every backend is checked against.

Everything here is plain differentiable PyTorch, works for every floating dtype (float64
included) and is written to be read. Two families live here:

* ``lstm_cell`` / ``gru_cell`` / ``rnn_cell`` and ``*_recurrence``: forward only, differentiable
  by autograd. Tests use them as the oracle.
* ``*_recurrence_forward`` / ``*_recurrence_backward``: the ``"reference"`` backend of the
  ``torch.ops.fastrnn`` recurrence ops. The forward also returns what the backward needs
  (the workspace) and the backward is derived by hand, in reverse time, exactly the
  algorithm the C++ and Triton kernels implement. Comparing it with autograd through the
  cells checks the derivation.

Shapes (time-major): ``x_proj`` (T, B, G) holds ``x @ W_ih^T + b_ih (+ b_hh)`` for the whole
sequence, with G = 4H (LSTM, gates i, f, g, o), 3H (GRU, gates r, z, n) or H (RNN).
``w_hh`` is (G, P) with P = proj_size or H. ``lengths`` (B,) int64 or None: step t of
sequence b is active iff ``t < lengths[b]``; an inactive step keeps the state and writes a
zero output. The same rule serves the reverse direction, which then starts from h0 at
each sequence's own last step.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "acc_dtype",
    "lstm_cell",
    "gru_cell",
    "rnn_cell",
    "lstm_recurrence",
    "gru_recurrence",
    "rnn_recurrence",
    "lstm_recurrence_forward",
    "lstm_recurrence_backward",
    "gru_recurrence_forward",
    "gru_recurrence_backward",
    "rnn_recurrence_forward",
    "rnn_recurrence_backward",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype that states and accumulations are kept in: fp32 for fp16/bf16, else unchanged."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ----------------------------------------------------------------------------------------
# Cells: one step, batch-major (B, .). The only place the cell math is written in Python.
# ----------------------------------------------------------------------------------------
def lstm_cell(
    x_proj_t: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM step. Returns ``(h_new, c_new, acts)``; ``acts`` = activated gates (B, 4H)."""
    gates = x_proj_t + h @ w_hh.t()
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new, torch.cat([i, f, g, o], dim=-1)


def gru_cell(
    x_proj_t: Tensor, h: Tensor, w_hh: Tensor, b_hn: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """One GRU step as torch.nn defines it: ``b_hn`` sits inside the reset product.

    ``x_proj_t`` (B, 3H) already holds ``b_ir + b_hr``, ``b_iz + b_hz`` and ``b_in``.
    Returns ``(h_new, acts)``; ``acts`` = (r, z, n, hn) with hn = h @ W_hn^T + b_hn, (B, 4H).
    """
    xr, xz, xn = x_proj_t.chunk(3, dim=-1)
    hr, hz, hn = (h @ w_hh.t()).chunk(3, dim=-1)
    if b_hn is not None:
        hn = hn + b_hn
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h_new = (1 - z) * n + z * h
    return h_new, torch.cat([r, z, n, hn], dim=-1)


def rnn_cell(x_proj_t: Tensor, h: Tensor, w_hh: Tensor, nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step: ``act(x_proj_t + h @ W_hh^T)`` with act tanh or relu."""
    a = x_proj_t + h @ w_hh.t()
    if nonlinearity == "tanh":
        return torch.tanh(a)
    if nonlinearity == "relu":
        return torch.relu(a)
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


# ----------------------------------------------------------------------------------------
# The time loop, shared by every cell.
# ----------------------------------------------------------------------------------------
def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(t: int, lengths: Optional[Tensor]) -> Optional[Tensor]:
    """(B, 1) bool mask of the sequences for which step t is real, or None (all are)."""
    return None if lengths is None else (t < lengths).unsqueeze(1)


def _keep(mask: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    return new if mask is None else torch.where(mask, new, old)


def _zero_inactive(mask: Optional[Tensor], x: Tensor) -> Tensor:
    # where, not a multiply: a padded step may hold inf/nan that 0 * x would propagate
    return x if mask is None else torch.where(mask, x, 0.0)


def _run(cell, x_proj: Tensor, states: tuple[Tensor, ...], lengths, reverse: bool):
    """Run ``cell(x_proj_t, *states) -> (out_t, new_states, extras)`` over time.

    Returns (outputs (T, B, .), final states, per-step carried states, per-step extras).
    Inactive steps keep every state and output zeros; their carried state and extras are
    still recorded so that the backward can index them uniformly.
    """
    T = x_proj.shape[0]
    ys: list = [None] * T
    carried: list = [None] * T
    extras: list = [None] * T
    for t in _steps(T, reverse):
        m = _active(t, lengths)
        out, new_states, extra = cell(x_proj[t], *states)
        states = tuple(_keep(m, n, s) for n, s in zip(new_states, states))
        ys[t] = _zero_inactive(m, out)
        carried[t] = states
        extras[t] = extra
    return torch.stack(ys), states, carried, extras


def _to_acc(*tensors: Optional[Tensor]):
    return [None if t is None else t.to(acc_dtype(t.dtype)) for t in tensors]


def lstm_recurrence(
    x_proj: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM over a sequence, differentiable by autograd.

    Args: x_proj (T, B, 4H), w_hh (4H, P), w_hr (P, H) or None, h0 (B, P), c0 (B, H),
    lengths (B,) or None, reverse. Returns y (T, B, P), h_n (B, P), c_n (B, H).
    """
    return lstm_recurrence_forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse)[:3]


def gru_recurrence(
    x_proj: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """GRU over a sequence. x_proj (T, B, 3H), w_hh (3H, H), b_hn (H,) or None, h0 (B, H)."""
    return gru_recurrence_forward(x_proj, w_hh, b_hn, h0, lengths, reverse)[:2]


def rnn_recurrence(
    x_proj: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    nonlinearity: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """Elman RNN over a sequence. x_proj (T, B, H), w_hh (H, H), h0 (B, H)."""
    return rnn_recurrence_forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity)


# ----------------------------------------------------------------------------------------
# The "reference" backend: forward with workspace, hand-derived backward.
# fp16/bf16 inputs are computed in fp32 and outputs cast back, as the kernels do.
# ----------------------------------------------------------------------------------------
def lstm_recurrence_forward(x_proj, w_hh, w_hr, h0, c0, lengths=None, reverse=False):
    """Returns y (T,B,P), h_n, c_n, gates (T,B,4H) activated i,f,g,o, cs (T,B,H) carried c_t."""
    dtype = x_proj.dtype
    x_proj, w_hh, w_hr, h0, c0 = _to_acc(x_proj, w_hh, w_hr, h0, c0)

    def cell(xt, h, c):
        h_new, c_new, acts = lstm_cell(xt, h, c, w_hh, w_hr)
        return h_new, (h_new, c_new), acts

    y, (h_n, c_n), carried, acts = _run(cell, x_proj, (h0, c0), lengths, reverse)
    gates = torch.stack(acts)
    cs = torch.stack([s[1] for s in carried])
    return y.to(dtype), h_n.to(dtype), c_n.to(dtype), gates, cs


def gru_recurrence_forward(x_proj, w_hh, b_hn, h0, lengths=None, reverse=False):
    """Returns y (T,B,H), h_n, gates (T,B,4H) = r, z, n, hn."""
    dtype = x_proj.dtype
    x_proj, w_hh, b_hn, h0 = _to_acc(x_proj, w_hh, b_hn, h0)

    def cell(xt, h):
        h_new, acts = gru_cell(xt, h, w_hh, b_hn)
        return h_new, (h_new,), acts

    y, (h_n,), _, acts = _run(cell, x_proj, (h0,), lengths, reverse)
    return y.to(dtype), h_n.to(dtype), torch.stack(acts)


def rnn_recurrence_forward(x_proj, w_hh, h0, lengths=None, reverse=False, nonlinearity="tanh"):
    """Returns y (T,B,H), h_n. The backward needs only y: act' is a function of act's output."""
    dtype = x_proj.dtype
    x_proj, w_hh, h0 = _to_acc(x_proj, w_hh, h0)

    def cell(xt, h):
        h_new = rnn_cell(xt, h, w_hh, nonlinearity)
        return h_new, (h_new,), None

    y, (h_n,), _, _ = _run(cell, x_proj, (h0,), lengths, reverse)
    return y.to(dtype), h_n.to(dtype)


def _prev_index(t: int, reverse: bool) -> int:
    return t + 1 if reverse else t - 1


def _h_prev(y: Tensor, h0: Tensor, lengths: Optional[Tensor], reverse: bool) -> Tensor:
    """(T, B, P): the state each step started from, for the active steps.

    Forward direction: y[t-1] (always active when t is) or h0 at t=0. Reverse: y[t+1] when
    step t+1 was active for that sequence, else h0 (the sequence starts at its own end).
    Entries of inactive steps are never used (their dgates are zero).
    """
    h0 = h0.unsqueeze(0)
    if not reverse:
        return torch.cat([h0, y[:-1]], dim=0)
    hp = torch.cat([y[1:], h0], dim=0)
    if lengths is None:
        return hp
    T = y.shape[0]
    t_next = torch.arange(1, T + 1, device=y.device).unsqueeze(1)  # (T, 1)
    started = (t_next < lengths.unsqueeze(0)).unsqueeze(2)  # (T, B, 1)
    return torch.where(started, hp, h0)


def lstm_recurrence_backward(
    dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths=None, reverse=False
):
    """Reverse-time LSTM backward.

    Per active step, with dh the gradient reaching h_t (from later steps and from y_t):
        m = o*tanh(c_t) (pre-projection output), h_t = m @ W_hr^T (or h_t = m)
        dm = dh @ W_hr (or dh);            do = dm*tanh(c_t)
        dc_t = dc + dm*o*(1 - tanh(c_t)^2)
        di = dc_t*g,  df = dc_t*c_{t-1},  dg = dc_t*i,  dc_{t-1} = dc_t*f
        dgates = [di*i(1-i), df*f(1-f), dg*(1-g^2), do*o(1-o)]
        dh_{t-1} = dgates @ W_hh
    Inactive steps pass dh, dc through unchanged and contribute zero dgates. After the loop,
    dW_hh = dgates^T h_prev and dW_hr = dh^T m are single GEMMs over all T*B rows.
    Returns dx_proj (T,B,4H), dw_hh, dw_hr (or None), dh0, dc0.
    """
    dtype = dy.dtype
    dy, dh, dc, w_hh, w_hr, h0, c0, y = _to_acc(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y)
    T, B, H = cs.shape
    dgates = torch.zeros_like(gates)
    dh_out = torch.zeros_like(dy) if w_hr is not None else None
    for t in _steps(T, not reverse):
        m = _active(t, lengths)
        i, f, g, o = gates[t].chunk(4, dim=-1)
        p = _prev_index(t, reverse)
        c_prev = cs[p] if 0 <= p < T else c0
        dh_t = dh + dy[t]
        if w_hr is not None:
            dh_out[t] = _zero_inactive(m, dh_t)
            dm = dh_t @ w_hr
        else:
            dm = dh_t
        tc = torch.tanh(cs[t])
        dc_t = dc + dm * o * (1 - tc * tc)
        dg_t = torch.cat(
            [dc_t * g * i * (1 - i), dc_t * c_prev * f * (1 - f), dc_t * i * (1 - g * g),
             dm * tc * o * (1 - o)],
            dim=-1,
        )
        dg_t = _zero_inactive(m, dg_t)
        dgates[t] = dg_t
        dh = _keep(m, dg_t @ w_hh, dh)
        dc = _keep(m, dc_t * f, dc)
    h_prev = _h_prev(y, h0, lengths, reverse)
    dw_hh = dgates.reshape(T * B, 4 * H).t() @ h_prev.reshape(T * B, h_prev.shape[-1])
    dw_hr = None
    if w_hr is not None:
        i, f, g, o = gates.chunk(4, dim=-1)
        pre = o * torch.tanh(cs)
        dw_hr = dh_out.reshape(T * B, dh_out.shape[-1]).t() @ pre.reshape(T * B, H)
        dw_hr = dw_hr.to(dtype)
    return dgates.to(dtype), dw_hh.to(dtype), dw_hr, dh.to(dtype), dc.to(dtype)


def gru_recurrence_backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths=None, reverse=False):
    """Reverse-time GRU backward.

    h_t = (1-z)*n + z*h_{t-1},  n = tanh(xn + r*hn),  hn = h_{t-1} @ W_hn^T + b_hn.
    Per active step with dh reaching h_t:
        dn = dh*(1-z), dz = dh*(h_{t-1} - n), dan = dn*(1-n^2)
        dar = dan*hn*r(1-r),  daz = dz*z(1-z),  dhn = dan*r
        dx_proj_t = [dar, daz, dan];  dgh_t = [dar, daz, dhn] (gradient of h @ W_hh^T)
        dh_{t-1} = dh*z + dgh_t @ W_hh
    dW_hh = dgh^T h_prev (one GEMM), db_hn = sum of dhn over T*B.
    Returns dx_proj (T,B,3H), dw_hh, db_hn (or None), dh0.
    """
    dtype = dy.dtype
    dy, dh, w_hh, b_hn, h0, y = _to_acc(dy, dh_n, w_hh, b_hn, h0, y)
    T, B, H4 = gates.shape
    H = H4 // 4
    h_prev = _h_prev(y, h0, lengths, reverse)
    dx_proj = torch.zeros(T, B, 3 * H, dtype=gates.dtype, device=gates.device)
    for t in _steps(T, not reverse):
        m = _active(t, lengths)
        r, z, n, hn = gates[t].chunk(4, dim=-1)
        dh_t = dh + dy[t]
        dan = dh_t * (1 - z) * (1 - n * n)
        dar = dan * hn * r * (1 - r)
        daz = dh_t * (h_prev[t] - n) * z * (1 - z)
        dx_t = torch.cat([dar, daz, dan], dim=-1)
        dx_t = _zero_inactive(m, dx_t)
        dx_proj[t] = dx_t
        dgh_t = torch.cat([dar, daz, dan * r], dim=-1)
        dh = _keep(m, dh_t * z + dgh_t @ w_hh, dh)
    r = gates[..., :H]
    dhn = dx_proj[..., 2 * H:] * r
    dgh = torch.cat([dx_proj[..., : 2 * H], dhn], dim=-1)
    dw_hh = dgh.reshape(T * B, 3 * H).t() @ h_prev.reshape(T * B, H)
    db_hn = None if b_hn is None else dhn.reshape(T * B, H).sum(0).to(dtype)
    return dx_proj.to(dtype), dw_hh.to(dtype), db_hn, dh.to(dtype)


def rnn_recurrence_backward(dy, dh_n, w_hh, h0, y, lengths=None, reverse=False, nonlinearity="tanh"):
    """Reverse-time Elman RNN backward: da = dh * act'(h_t), dh_{t-1} = da @ W_hh,
    with act' = 1 - h_t^2 (tanh) or [h_t > 0] (relu). Returns dx_proj, dw_hh, dh0."""
    dtype = dy.dtype
    dy, dh, w_hh, h0, y = _to_acc(dy, dh_n, w_hh, h0, y)
    T, B, H = y.shape
    dx_proj = torch.zeros_like(y)
    for t in _steps(T, not reverse):
        m = _active(t, lengths)
        deriv = 1 - y[t] * y[t] if nonlinearity == "tanh" else (y[t] > 0).to(y.dtype)
        da = (dh + dy[t]) * deriv
        da = _zero_inactive(m, da)
        dx_proj[t] = da
        dh = _keep(m, da @ w_hh, dh)
    h_prev = _h_prev(y, h0, lengths, reverse)
    dw_hh = dx_proj.reshape(T * B, H).t() @ h_prev.reshape(T * B, H)
    return dx_proj.to(dtype), dw_hh.to(dtype), dh.to(dtype)
