"""PeepholeLSTM in Triton: an LSTM-shaped cell run by the LSTM's kernels (lstm.py), every
shape and the projection included. Only the cell pair below is new; the peepholes
w_ch = (p_i, p_f, p_o) (3H,) reach it as the (3, H) per-unit parameter tile.

    i = sig(a_i + p_i*c_{t-1}), f = sig(a_f + p_f*c_{t-1}), g = tanh(a_g)
    c_t = f*c_{t-1} + i*g,  o = sig(a_o + p_o*c_t),  m_t = o*tanh(c_t)

Backward of one step (dm: gradient reaching m_t, dc: reaching c_t from later steps):
    da_o = dm*tanh(c_t)*o(1-o);  dc_t = dc + dm*o*(1 - tanh(c_t)^2) + da_o*p_o
    da_i = dc_t*g*i(1-i), da_f = dc_t*c_{t-1}*f(1-f), da_g = dc_t*i*(1-g^2)
    dc_{t-1} = dc_t*f + da_i*p_i + da_f*p_f
dw_ch is not computed here: fastrnn.ops reduces dx_proj * c after the loop.
"""

import triton
import triton.language as tl  # noqa: F401  (TRITON_INTERPRET=1 wants tl among a jit function's globals)

from . import lstm
from ._common import cell_param, sigmoid, tanh


@triton.jit
def _peephole_cell(xi, xf, xg, xo, c_prev, cp):
    """lstm._lstm_cell's interface; cp rows p_i, p_f, p_o."""
    i = sigmoid(xi + cell_param(cp, 0) * c_prev)
    f = sigmoid(xf + cell_param(cp, 1) * c_prev)
    g = tanh(xg)
    c = f * c_prev + i * g
    o = sigmoid(xo + cell_param(cp, 2) * c)
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def _peephole_cell_backward(i, f, g, o, c, c_prev, dm, dc, cp):
    """lstm._lstm_cell_backward's interface: d(pre-activations) and dc_{t-1}."""
    tc = tanh(c)
    do = dm * tc * o * (1.0 - o)
    dct = dc + dm * o * (1.0 - tc * tc) + do * cell_param(cp, 2)
    di = dct * g * i * (1.0 - i)
    df = dct * c_prev * f * (1.0 - f)
    return di, df, dct * i * (1.0 - g * g), do, dct * f + di * cell_param(cp, 0) + df * cell_param(cp, 1)


PEEPHOLE_CELL = (_peephole_cell, _peephole_cell_backward)


def _peepholes(w_ch, H):
    """w_ch (3H,) as the (3, H) parameter tile, rows p_i, p_f, p_o."""
    if tuple(w_ch.shape) != (3 * H,):
        raise ValueError(f"w_ch must be (3H,) = ({3 * H},), got {tuple(w_ch.shape)}")
    return w_ch.reshape(3, H)


def forward(x_proj, w_hh, w_hr, w_ch, h0, c0, lengths, reverse, precision):
    """lstm.forward's results, with the peephole cell."""
    H = x_proj.shape[-1] // 4
    return lstm.forward(
        x_proj, w_hh, w_hr, h0, c0, lengths, reverse, precision, cell=PEEPHOLE_CELL, cell_params=_peepholes(w_ch, H)
    )


def backward(dy, dh_n, dc_n, w_hh, w_hr, w_ch, c0, gates, cs, lengths, reverse, precision):
    """lstm.backward's results, with the peephole cell."""
    H = gates.shape[-1] // 4
    return lstm.backward(
        dy,
        dh_n,
        dc_n,
        w_hh,
        w_hr,
        c0,
        gates,
        cs,
        lengths,
        reverse,
        precision,
        cell=PEEPHOLE_CELL,
        cell_params=_peepholes(w_ch, H),
    )
