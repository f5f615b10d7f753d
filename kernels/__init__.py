"""Triton kernels of fastrnn (installed as ``fastrnn.kernels``): the ``"triton"`` backend.

One module per cell (lstm.py, gru.py, rnn.py), each with its cell math in one
``@triton.jit`` helper shared by all of its kernels, and one launcher per direction that
names the tensors each kernel takes. launch.py picks the kernel shape and launches every
kernel (by keyword). The entry points below run the time loop only (the backend contract):
the weight gradients and h_prev are computed once, after the loop, by the caller.

Kernel shapes, chosen by ``_common.kernel_shape`` from the weight size:

* sequence kernel: one launch for the whole sequence; each program owns 16 batch rows and
  the whole hidden width and keeps the W_hh (and W_hr) tiles, h and c on chip for all T
  steps, with no inter-program synchronisation. Used while the padded fp32 weight tiles
  fit ``RESIDENT_BYTES`` (64 KiB: LSTM H=P<=64, GRU H<=64, RNN H<=128).
* step kernels: one launch per time step over batch x hidden tiles, h @ W_hh^T fused with
  the cell and the state update; the backward's dh_{t-1} = dgates @ W_hh is the shared
  ``carry_dh`` step. Used for larger weights, which no single program can hold.

* persistent kernels (LSTM without projection, GRU): programs tile batch x hidden, keep
  their weight slice on chip for all T steps, and meet at a grid barrier each step. Only
  when forced, until timed on a GPU.

``FASTRNN_TRITON_KERNEL=sequence|step|persistent`` forces one shape (tests run all).
``workspace=False`` is accepted and ignored: the kernels always write the workspace.
python -m fastrnn.kernels.resources reports each kernel's registers, spills and shared
memory compiled for sm_90, without a GPU.

fp32 precision policy (as nn.LSTM on cuDNN): the recurrent products use TF32 when
``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default) and IEEE fp32 when it is not;
cuDNN's RNN follows the same flag (aten/src/ATen/native/cudnn/RNN.cpp sets the RNN
descriptor's math type from it). fp16/bf16 inputs: the recurrent products take fp16/bf16
operands (the fp32 state rounded to the weights' dtype) with fp32 accumulation, as cuDNN's
RNNs do; state, cell math and workspaces stay fp32, outputs are in the input dtype.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (IEEE).
"""
import torch

from . import gru, lstm, rnn

__all__ = [
    "lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward",
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


def lstm_forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, workspace=True):
    """-> y (T, B, P), h_n (B, P), c_n (B, H) in the input dtype; gates (T, B, 4H) activated
    i, f, g, o and cs (T, B, H) carried c_t, fp32."""
    _check(x_proj)
    return lstm.forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, dot_precision(x_proj))


def lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, cs, lengths, reverse):
    """-> dx_proj (T, B, 4H), dh0 (B, P), dc0 (B, H), dh_out (T, B, P) (an empty (0,) tensor
    without w_hr), fp32."""
    return lstm.backward(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, cs, lengths, reverse, dot_precision(dy))


def gru_forward(x_proj, w_hh, b_hn, h0, lengths, reverse, workspace=True):
    """-> y (T, B, H), h_n (B, H) in the input dtype; acts (T, B, 4H) = r, z, n, hn, fp32."""
    _check(x_proj)
    return gru.forward(x_proj, w_hh, b_hn, h0, lengths, reverse, dot_precision(x_proj))


def gru_backward(dy, dh_n, w_hh, h_prev, acts, lengths, reverse):
    """-> dx_proj (T, B, 3H) = [dar, daz, dan], dh0 (B, H), fp32."""
    return gru.backward(dy, dh_n, w_hh, h_prev, acts, lengths, reverse, dot_precision(dy))


def rnn_forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity, workspace=True):
    """-> y (T, B, H), h_n (B, H) in the input dtype."""
    _check(x_proj)
    return rnn.forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity, dot_precision(x_proj))


def rnn_backward(dy, dh_n, w_hh, y, lengths, reverse, nonlinearity):
    """-> dx_proj (T, B, H), dh0 (B, H), fp32."""
    return rnn.backward(dy, dh_n, w_hh, y, lengths, reverse, nonlinearity, dot_precision(dy))


# -- transitional: removed when the shared post-loop lands -------------------------------
from fastrnn.reference import _h_prev  # noqa: E402


def _grad_w(dpre, h):
    """dpre^T h summed over (T, B)."""
    return dpre.reshape(-1, dpre.shape[-1]).t() @ h.reshape(-1, h.shape[-1])


def lstm_recurrence_forward(x_proj, w_hh, w_hr, h0, c0, lengths=None, reverse=False):
    return lstm_forward(x_proj, w_hh, w_hr, h0, c0, lengths, reverse)


def lstm_recurrence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths=None, reverse=False):
    dx, dh0, dc0, dh_out = lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, gates, cs, lengths, reverse)
    H, dtype = cs.shape[-1], dy.dtype
    dw_hh = _grad_w(dx, _h_prev(y, h0, lengths, reverse).to(dx.dtype)).to(dtype)
    dw_hr = _grad_w(dh_out, gates[..., 3 * H:] * torch.tanh(cs)).to(dtype) if w_hr is not None else None
    return dx.to(dtype), dw_hh, dw_hr, dh0.to(dtype), dc0.to(dtype)


def gru_recurrence_forward(x_proj, w_hh, b_hn, h0, lengths=None, reverse=False):
    return gru_forward(x_proj, w_hh, b_hn, h0, lengths, reverse)


def gru_recurrence_backward(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths=None, reverse=False):
    hp = _h_prev(y, h0, lengths, reverse).to(torch.float32)
    dx, dh0 = gru_backward(dy, dh_n, w_hh, hp, gates, lengths, reverse)
    H, dtype = dh0.shape[-1], dy.dtype
    dgh = torch.cat([dx[..., :2 * H], dx[..., 2 * H:] * gates[..., :H]], dim=-1)
    db_hn = dgh[..., 2 * H:].sum((0, 1)).to(dtype) if b_hn is not None else None
    return dx.to(dtype), _grad_w(dgh, hp).to(dtype), db_hn, dh0.to(dtype)


def rnn_recurrence_forward(x_proj, w_hh, h0, lengths=None, reverse=False, nonlinearity="tanh"):
    return rnn_forward(x_proj, w_hh, h0, lengths, reverse, nonlinearity)


def rnn_recurrence_backward(dy, dh_n, w_hh, h0, y, lengths=None, reverse=False, nonlinearity="tanh"):
    da, dh0 = rnn_backward(dy, dh_n, w_hh, y, lengths, reverse, nonlinearity)
    dw_hh = _grad_w(da, _h_prev(y, h0, lengths, reverse).to(da.dtype)).to(dy.dtype)
    return da.to(dy.dtype), dw_hh, dh0.to(dy.dtype)
# -- end transitional ----------------------------------------------------------------------
