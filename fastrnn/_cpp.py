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

With ``workspace=False`` (no backward will follow) gates/cs/acts come back as empty tensors
and the loop keeps only O(B*H) state. The weight gradients are not computed here.
"""
import os

from . import _C

# Tests set FASTRNN_POISON=1: every buffer the kernels write then starts NaN-filled.
_C.set_poison(os.environ.get("FASTRNN_POISON", "0") == "1")

WORKSPACE_OPTIONAL = True

lstm_forward = _C.lstm_forward
lstm_backward = _C.lstm_backward
gru_forward = _C.gru_forward
gru_backward = _C.gru_backward
rnn_forward = _C.rnn_forward
rnn_backward = _C.rnn_backward


# -- transitional: removed when the shared post-loop lands
# The old entry points over the new ones, with the post-loop work (h_prev, dW_hh, dW_hr, db_hn)
# done here as the C++ backend did it before.
import torch  # noqa: E402

from .reference import _h_prev  # noqa: E402


def lstm_recurrence_forward(x_proj, w_hh, w_hr, h0, c0, lengths=None, reverse=False, workspace=True):
    return tuple(lstm_forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, workspace))


def lstm_recurrence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths=None, reverse=False):
    dx, dh0, dc0, dh_out = lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, cs, lengths, reverse)
    T, B, G = dx.shape
    hp = _h_prev(y, h0, lengths, reverse)
    dw_hh = dx.view(T * B, G).t() @ hp.reshape(T * B, hp.shape[-1])
    dw_hr = None
    if w_hr is not None:
        H = G // 4
        pre = gates.narrow(2, 3 * H, H) * cs.tanh()
        dw_hr = dh_out.view(T * B, dh_out.shape[-1]).t() @ pre.reshape(T * B, H)
    return dx, dw_hh, dw_hr, dh0, dc0


def gru_recurrence_forward(x_proj, w_hh, b_hn, h0, lengths=None, reverse=False, workspace=True):
    return tuple(gru_forward(x_proj, w_hh, b_hn, h0, lengths, reverse, workspace))


def gru_recurrence_backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths=None, reverse=False):
    hp = _h_prev(y, h0, lengths, reverse).contiguous()
    dx, dh0 = gru_backward(dy, dh_n, w_hh, hp, gates, lengths, reverse)
    T, B, G = dx.shape
    H = G // 3
    dgh = torch.cat([dx[..., :2 * H], dx[..., 2 * H:] * gates[..., :H]], 2)
    dw_hh = dgh.view(T * B, G).t() @ hp.view(T * B, H)
    db_hn = dgh[..., 2 * H:].sum((0, 1)) if b_hn is not None else None
    return dx, dw_hh, db_hn, dh0


def rnn_recurrence_forward(x_proj, w_hh, h0, lengths=None, reverse=False, nonlinearity="tanh"):
    return tuple(rnn_forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity))


def rnn_recurrence_backward(dy, dh_n, w_hh, h0, y, lengths=None, reverse=False, nonlinearity="tanh"):
    dx, dh0 = rnn_backward(dy, dh_n, w_hh, y, lengths, reverse, nonlinearity)
    T, B, H = dx.shape
    dw_hh = dx.view(T * B, H).t() @ _h_prev(y, h0, lengths, reverse).reshape(T * B, H)
    return dx, dw_hh, dh0
# -- end transitional
