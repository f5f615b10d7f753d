"""Triton kernels of fastrnn (installed as ``fastrnn.kernels``): the ``"triton"`` backend.

One module per cell (lstm.py, gru.py, rnn.py, layernorm_lstm.py), each with its cell math in one
``@triton.jit`` helper shared by all of its kernels, and one launcher per direction that
names the tensors each kernel takes. launch.py picks the kernel shape and launches every
kernel (by keyword). peephole_lstm.py is only a cell pair: the PeepholeLSTM runs on
lstm.py's kernels, which take their cell as a constexpr. The entry points below run the
time loop only (the backend contract): the weight gradients and h_prev are computed once,
after the loop, by the caller.

Kernel shapes, chosen by ``_common.kernel_shape`` from the weight size:

* sequence kernel: one launch for the whole sequence; each program owns 16 batch rows and
  the whole hidden width and keeps the W_hh (and W_hr) tiles, h and c on chip for all T
  steps, with no inter-program synchronisation. Used while the padded fp32 weight tiles
  fit ``RESIDENT_BYTES`` (64 KiB: LSTM and LayerNorm LSTM H=P<=64, GRU H<=64, RNN H<=128).
* step kernels: one launch per time step over batch x hidden tiles, h @ W_hh^T fused with
  the cell and the state update; the backward's dh_{t-1} = dgates @ W_hh is the shared
  ``carry_dh`` step. Used for larger weights, which no single program can hold. The
  LayerNorm LSTM's norms need whole rows: its step writes h @ W_hh^T to a buffer, and a
  row kernel (programs over batch rows, ``launch.row_blocks``) does the rest of the step.

* persistent kernels (LSTM without projection, GRU): programs tile batch x hidden, keep
  their weight slice on chip for all T steps, and meet at a grid barrier each step. Only
  when forced, until timed on a GPU. Launched as a cooperative grid; should its programs
  still not all run at once, the barrier gives up after a bounded wait and the launch
  raises a RuntimeError (``launch.launch_persistent``) instead of hanging.

``FASTRNN_TRITON_KERNEL=sequence|step|persistent`` forces one shape (tests run all). A forced
sequence kernel past its fit (weight tiles over ``RESIDENT_BYTES``) is refused with a
ValueError before anything compiles, on every device: compiled for sm_90 it would need more
shared memory than a block has. A forced persistent shape runs the step kernels where no
persistent grid can run.
``workspace=False`` is accepted and ignored: the kernels always write the workspace.
python -m fastrnn.kernels.resources reports each kernel's registers, spills and shared
memory compiled for sm_90, without a GPU.

fp32 precision policy: the TF32 rule of :mod:`fastrnn.numerics` (as nn.LSTM on cuDNN, TF32
exactly when torch.nn's would: ``fastrnn.numerics.cudnn_rnn_tf32``). fp16/bf16 inputs: the
recurrent products take fp16/bf16 operands (the fp32 state rounded to the weights' dtype)
with fp32 accumulation, as cuDNN's RNNs do; state, cell math and workspaces stay fp32,
outputs are in the input dtype.
The layer's other GEMMs follow the same rule through the backend's own (gemm.py), not
torch.backends.cuda.matmul's: the weight gradients (dW_hh, dW_hr after the loop, dW_ih) by
``weight_grad``, the input projection and its input gradient by ``linear`` and
``linear_backward``.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (IEEE).
"""

import torch

from fastrnn.cells import _layer_norm_backward
from fastrnn.numerics import dot_precision

from . import gru, layernorm_lstm, lstm, peephole_lstm, rnn
from ._compat import interpreter_scalar_index
from .gemm import linear, linear_backward, weight_grad

interpreter_scalar_index()

__all__ = [
    "lstm_forward",
    "lstm_backward",
    "peephole_lstm_forward",
    "peephole_lstm_backward",
    "gru_forward",
    "gru_backward",
    "rnn_forward",
    "rnn_backward",
    "layernorm_lstm_forward",
    "layernorm_lstm_backward",
    "weight_grad",
    "linear",
    "linear_backward",
]


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


def peephole_lstm_forward(x_proj, w_hh, w_hr, w_ch, h0, c0, lengths, reverse, workspace=True):
    """lstm_forward's results for the PeepholeLSTM (w_ch (3H,) = p_i, p_f, p_o): the LSTM
    kernels with the peephole cell (peephole_lstm.py)."""
    _check(x_proj)
    return peephole_lstm.forward(x_proj, w_hh, w_hr, w_ch, h0, c0, lengths, reverse, dot_precision(x_proj))


def peephole_lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, w_ch, c0, gates, cs, lengths, reverse):
    """lstm_backward's results for the PeepholeLSTM; dw_ch is left to the caller (a reduction
    of dx_proj * c after the loop)."""
    return peephole_lstm.backward(dy, dh_n, dc_n, w_hh, w_hr, w_ch, c0, gates, cs, lengths, reverse, dot_precision(dy))


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


def layernorm_lstm_forward(
    x_proj, w_hh, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, h0, c0, lengths, reverse, eps, workspace=True
):
    """x_proj (T, B, 4H) with LN_ih applied -> y (T, B, H), h_n (B, H), c_n (B, H) in the
    input dtype; ws (T, B, 9H + 2) = [i, f, g, o | rhat | shat | rstd_r, rstd_s] and cs
    (T, B, H) carried c_t, fp32."""
    _check(x_proj)
    return layernorm_lstm.forward(
        x_proj,
        w_hh,
        ln_hh_weight,
        ln_hh_bias,
        ln_c_weight,
        ln_c_bias,
        h0,
        c0,
        lengths,
        reverse,
        eps,
        dot_precision(x_proj),
    )


def layernorm_lstm_backward(dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, c0, ws, cs, lengths, reverse):
    """-> dx_proj (T, B, 4H), dh0 (B, H), dc0 (B, H), dgh (T, B, 4H) (the gradient of
    h_{t-1} @ W_hh^T), and per step summed over its active rows sum_da_rhat, sum_da (T, 4H),
    sum_dc_shat, sum_dc (T, H), fp32 (the contract of fastrnn.cells.LAYERNORM_LSTM).

    The kernels return dx_proj and dc_t; dgh and the per-step sums are formed here from them
    and the workspace, in a few bandwidth-bound passes over (T, B, 4H) (inactive rows are
    zero in both, so they add nothing), which costs little next to the loop on a GPU."""
    dx, dh0, dc0, dc_out = layernorm_lstm.backward(
        dy, dh_n, dc_n, w_hh, ln_hh_weight, ln_c_weight, c0, ws, cs, lengths, reverse, dot_precision(dy)
    )
    H = cs.shape[-1]
    rhat, shat, rstd_r = ws[..., 4 * H : 8 * H], ws[..., 8 * H : 9 * H], ws[..., 9 * H : 9 * H + 1]
    dgh = _layer_norm_backward(dx * ln_hh_weight.to(dx.dtype), rhat, rstd_r)
    return dx, dh0, dc0, dgh, (dx * rhat).sum(1), dx.sum(1), (dc_out * shat).sum(1), dc_out.sum(1)
