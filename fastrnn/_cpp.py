"""The ``"cpp"`` backend: the time loops of ``fastrnn._C`` (float32 and float64 CPU tensors).

Entry points, time-major (G: gate width, P: proj_size or H):

* ``lstm_forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, workspace=True)``
  -> y (T,B,P), h_n (B,P), c_n (B,H), gates (T,B,4H), cs (T,B,H)
* ``lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, cs, lengths, reverse)``
  -> dx_proj (T,B,4H), dh0 (B,P), dc0 (B,H), dh_out (T,B,P) or an empty (0,) tensor without w_hr
* ``gru_forward(x_proj, w_hh, b_hn, h0, lengths, reverse, workspace=True)``
  -> y (T,B,H), h_n (B,H), acts (T,B,4H) = r, z, n, hn
* ``gru_backward(dy, dh_n, w_hh, h_prev, acts, lengths, reverse)`` -> dx_proj (T,B,3H), dh0 (B,H)
* ``rnn_forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity, workspace=True)`` -> y, h_n
* ``rnn_backward(dy, dh_n, w_hh, y, lengths, reverse, nonlinearity)`` -> dx_proj (T,B,H), dh0 (B,H)
* ``peephole_lstm_forward(x_proj, w_hh, w_hr, w_ch, h0, c0, lengths, reverse, workspace=True)``
  -> y (T,B,P), h_n (B,P), c_n (B,H), gates (T,B,4H), cs (T,B,H); w_ch (3H,) = p_i, p_f, p_o
* ``peephole_lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, w_ch, c0, gates, cs, lengths, reverse)``
  -> dx_proj (T,B,4H), dh0 (B,P), dc0 (B,H), dh_out (T,B,P) or an empty (0,) tensor without w_hr
* ``layernorm_lstm_forward(x_proj, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0,
  lengths, reverse, eps, workspace=True)`` -> y (T,B,H), h_n, c_n, ws (T,B,9H+2), cs (T,B,H)
* ``layernorm_lstm_backward(dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, c0, ws, cs, lengths,
  reverse)`` -> dx_proj (T,B,4H), dh0 (B,H), dc0 (B,H), dgh (T,B,4H), and per step summed over
  its active rows sum_da_rhat (T,4H), sum_da (T,4H), sum_dc_shat (T,H), sum_dc (T,H)

One-call paths (``fastrnn.functional`` routes plain eager calls to them):

* ``stack_forward(mode, input, hx, weights, num_layers, bidirectional, bias, proj_size, dropout,
  lengths)`` -> output, h_n[, c_n]: a whole LSTM/GRU/RNN stack's forward when no backward follows
* ``lstm_cell_forward``/``gru_cell_forward``/``rnn_cell_forward`` and their ``*_backward``: one
  torch.nn cell step, products included (:mod:`fastrnn._cell_step`)

A layer's input projection (``backends.OWN_GEMMS``; fastrnn._projection calls them):

* ``linear(x, w, b)`` -> x @ w^T + b; ``linear_backward(dy, x, w, need_dx, need_dw)`` ->
  (dy @ w, dy^T x), an empty tensor for each not needed; ``weight_grad(dg, x, weight)`` ->
  dg^T x (dW_hh after the loop). float32 products large enough
  (``_C.uses_onednn``) run on oneDNN, the rest on torch's addmm/mm; the inference stack
  computes its projection with the same function, so both routes give the same bits.

With ``workspace=False`` (no backward will follow) gates/ws/cs/acts come back as empty tensors
and the loop keeps only O(B*H) state. The weight gradients are not computed here.
"""

import os

import torch

from . import _C

# Tests set FASTRNN_POISON=1: every buffer the kernels write then starts NaN-filled.
_C.set_poison(os.environ.get("FASTRNN_POISON", "0") == "1")

lstm_forward = _C.lstm_forward
lstm_backward = _C.lstm_backward
gru_forward = _C.gru_forward
gru_backward = _C.gru_backward
rnn_forward = _C.rnn_forward
rnn_backward = _C.rnn_backward
peephole_lstm_forward = _C.peephole_lstm_forward
peephole_lstm_backward = _C.peephole_lstm_backward
layernorm_lstm_forward = _C.layernorm_lstm_forward
layernorm_lstm_backward = _C.layernorm_lstm_backward

_OWN = (torch.float32, torch.float64)


def linear(x, w, b):
    """x @ w^T + b (see the module docstring); other dtypes than float32/float64 (a half
    layer whose projection runs before its cast) take torch's addmm."""
    if x.dtype in _OWN and w.dtype == x.dtype and (b is None or b.dtype == x.dtype):
        return _C.linear(x, w, b)
    return torch.addmm(b, x, w.t()) if b is not None else x @ w.t()


def weight_grad(dg, x, weight):
    """dg^T x over all rows (dg (R, G), x (R, N)): a weight gradient after the time loop
    (``weight``, the layer's, is not needed here); oneDNN where it takes the product."""
    if dg.dtype in _OWN and x.dtype == dg.dtype:
        return _C.weight_grad(dg, x)
    return dg.t() @ x


def linear_backward(dy, x, w, need_dx, need_dw):
    """(dx = dy @ w, dw = dy^T x) of :func:`linear`, an empty tensor for each not needed."""
    if dy.dtype in _OWN and x.dtype == dy.dtype and w.dtype == dy.dtype:
        return _C.linear_backward(dy, x, w, need_dx, need_dw)
    return (dy @ w if need_dx else dy.new_empty(0), dy.t() @ x if need_dw else w.new_empty(0))
