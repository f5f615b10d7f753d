"""Triton kernels of fastrnn (installed as ``fastrnn.kernels``): the ``"triton"`` backend.

One module per cell (lstm.py, gru.py, rnn.py), each with its cell math in one
``@triton.jit`` helper shared by all of its kernels. The entry points below have the
signatures of :mod:`fastrnn.reference`'s ``*_recurrence_forward/backward``.

Two kernel shapes per op, chosen by ``_common.kernel_shape`` from the weight size:

* sequence kernel: one launch for the whole sequence; each program owns 16 batch rows and
  the whole hidden width and keeps the W_hh (and W_hr) tiles, h and c on chip for all T
  steps, with no inter-program synchronisation. Used while the padded fp32 weight tiles
  fit ``RESIDENT_BYTES`` (64 KiB: LSTM H=P<=64, GRU H<=64, RNN H<=128).
* step kernels: one launch per time step over batch x hidden tiles, h @ W_hh^T fused with
  the cell and the state update; the backward's dh_{t-1} = dgates @ W_hh is the shared
  ``carry_dh`` step. Used for larger weights, which no single program can hold.

``FASTRNN_TRITON_KERNEL=sequence|step`` forces one shape (tests run both).

fp32 precision policy (as nn.LSTM on cuDNN): the recurrent products use TF32 when
``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default) and IEEE fp32 when it is not;
cuDNN's RNN follows the same flag (aten/src/ATen/native/cudnn/RNN.cpp sets the RNN
descriptor's math type from it). fp16/bf16 inputs: the recurrent products take fp16/bf16
operands (the fp32 state rounded to the weights' dtype) with fp32 accumulation, as cuDNN's
RNNs do; state, cell math and workspaces stay fp32, outputs are in the input dtype.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (IEEE).
"""
import torch

from fastrnn.reference import _h_prev

from . import gru, lstm, rnn

__all__ = [
    "lstm_recurrence_forward", "lstm_recurrence_backward",
    "gru_recurrence_forward", "gru_recurrence_backward",
    "rnn_recurrence_forward", "rnn_recurrence_backward",
]


def dot_precision(t: torch.Tensor) -> str:
    if t.device.type == "cuda" and t.dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _check(x: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise RuntimeError(f"fastrnn triton backend supports float32, float16 and bfloat16, got {x.dtype}")


def lstm_recurrence_forward(x_proj, w_hh, w_hr, h0, c0, lengths=None, reverse=False):
    _check(x_proj)
    return lstm.forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, dot_precision(x_proj))


def lstm_recurrence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths=None, reverse=False):
    return lstm.backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse,
                         dot_precision(dy), _h_prev)


def gru_recurrence_forward(x_proj, w_hh, b_hn, h0, lengths=None, reverse=False):
    _check(x_proj)
    return gru.forward(x_proj, w_hh, b_hn, h0, lengths, reverse, dot_precision(x_proj))


def gru_recurrence_backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths=None, reverse=False):
    return gru.backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths, reverse, dot_precision(dy), _h_prev)


def rnn_recurrence_forward(x_proj, w_hh, h0, lengths=None, reverse=False, nonlinearity="tanh"):
    _check(x_proj)
    return rnn.forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity, dot_precision(x_proj))


def rnn_recurrence_backward(dy, dh_n, w_hh, h0, y, lengths=None, reverse=False, nonlinearity="tanh"):
    return rnn.backward(dy, dh_n, w_hh, h0, y, lengths, reverse, nonlinearity, dot_precision(dy), _h_prev)
