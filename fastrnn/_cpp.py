"""The ``"cpp"`` backend: thin adaptor from the recurrence entry points to ``fastrnn._C``.

float32 and float64 CPU tensors. Signatures as in :mod:`fastrnn.reference`, plus
``workspace=False`` on the LSTM/GRU forwards: no backward will follow, so the per-step
gates/cell states are not kept (empty tensors are returned in their place).
"""
import os

from . import _C

# Tests set FASTRNN_POISON=1: every buffer the kernels write then starts NaN-filled.
_C.set_poison(os.environ.get("FASTRNN_POISON", "0") == "1")

WORKSPACE_OPTIONAL = True


def lstm_recurrence_forward(x_proj, w_hh, w_hr, h0, c0, lengths=None, reverse=False, workspace=True):
    return tuple(_C.lstm_forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, workspace))


def lstm_recurrence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths=None, reverse=False):
    dx, dw_hh, dw_hr, dh0, dc0 = _C.lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse)
    return dx, dw_hh, (dw_hr if w_hr is not None else None), dh0, dc0


def gru_recurrence_forward(x_proj, w_hh, b_hn, h0, lengths=None, reverse=False, workspace=True):
    return tuple(_C.gru_forward(x_proj, w_hh, b_hn, h0, lengths, reverse, workspace))


def gru_recurrence_backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths=None, reverse=False):
    dx, dw_hh, db_hn, dh0 = _C.gru_backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths, reverse)
    return dx, dw_hh, (db_hn if b_hn is not None else None), dh0


def rnn_recurrence_forward(x_proj, w_hh, h0, lengths=None, reverse=False, nonlinearity="tanh"):
    return tuple(_C.rnn_forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity))


def rnn_recurrence_backward(dy, dh_n, w_hh, h0, y, lengths=None, reverse=False, nonlinearity="tanh"):
    return tuple(_C.rnn_backward(dy, dh_n, w_hh, h0, y, lengths, reverse, nonlinearity))
