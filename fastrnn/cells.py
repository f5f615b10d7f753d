"""What a cell is, stated once per cell. Everything else reads these specs: the layers and
the functional stack (which parameters a layer has and how they reach the loop), the
registered ops (schemas, argument checks, fake kernels, the autograd formula), the
reference backend (its time loops run the steps below), the parity tools and the tests.

A spec gives:

* the cell's gate count, its state (``h``, or ``h`` and ``c``) and the torch.nn modes it runs;
* its parameters per layer and direction (torch.nn's names, shapes and order, initialisation);
* how those parameters reach the time loop: the bias folded into the input projection
  ``x_proj = x @ W_ih^T + bias`` and the extra loop tensors (``w_hr``, ``b_hn``);
* the backend contract of its two time loops (argument and result names; every backend
  module has ``<name>_forward`` and ``<name>_backward`` with exactly these arguments);
* its reference step, forward and hand-derived backward, in plain PyTorch: the only place
  the cell math is written in Python;
* the work after the backward loop shared by every backend: the gradient of the recurrent
  product and the gradients of the extra loop tensors.

Shapes are time-major: ``x_proj`` (T, B, G) with G = n_gates * H, ``w_hh`` (G, P) with P the
output width (proj_size or H). A step works on batch-major rows (B, .).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["Cell", "Param", "LSTM", "GRU", "RNN", "PEEPHOLE_LSTM", "LAYERNORM_LSTM", "CELLS", "TORCH_NN", "for_mode"]


@dataclass(frozen=True)
class Param:
    """One parameter of a layer and direction, in torch.nn's naming: ``weight_ih`` becomes
    ``weight_ih_l0``, ``weight_ih_l0_reverse``, ...

    ``shape(input_size, hidden_size, proj_size)``; ``when``: "always", "bias" (only with
    bias=True) or "proj" (only with proj_size > 0). ``init``: "uniform" in
    [-1/sqrt(H), 1/sqrt(H)] as torch.nn initialises every RNN parameter (the torch.nn twins
    get that from torch.nn's own reset_parameters), or "ones" / "zeros" (LayerNorm gains
    and shifts)."""

    name: str
    shape: Callable[[int, int, int], tuple]
    when: str = "always"
    init: str = "uniform"

    def present(self, bias: bool, proj: bool) -> bool:
        return self.when == "always" or (self.when == "bias" and bias) or (self.when == "proj" and proj)


def _nn_params(n_gates: int, proj: bool) -> tuple[Param, ...]:
    """torch.nn's per-direction parameters, in its order: w_ih, w_hh, b_ih, b_hh, [w_hr]."""

    def out(h, p):
        return p if proj and p > 0 else h

    params = (
        Param("weight_ih", lambda i, h, p: (n_gates * h, i)),
        Param("weight_hh", lambda i, h, p: (n_gates * h, out(h, p))),
        Param("bias_ih", lambda i, h, p: (n_gates * h,), "bias"),
        Param("bias_hh", lambda i, h, p: (n_gates * h,), "bias"),
    )
    return params + ((Param("weight_hr", lambda i, h, p: (p, h), "proj"),) if proj else ())


@dataclass(frozen=True)
class Cell:
    """A recurrent cell. See the module docstring; the fields are documented inline."""

    name: str  # "lstm": op fastrnn::lstm_recurrence, backend entries lstm_forward / lstm_backward
    title: str  # "LSTM": the eager autograd Function is LSTMRecurrence
    modes: tuple[str, ...]  # the torch.nn mode strings it runs ("RNN_TANH", ...)
    n_gates: int
    states: tuple[str, ...]  # ("h", "c") or ("h",); h comes first
    extras: tuple[str, ...]  # optional loop tensors beside w_hh (None when absent)
    attrs: tuple[tuple[str, str, tuple], ...]  # non-tensor loop arguments: (name, schema type, allowed values)
    workspace: tuple[str, ...]  # forward results the backward loop needs besides y
    saved_states: tuple[int, ...]  # workspace entries that are carried states (by state index)
    backward_args: tuple[str, ...]  # the backend backward loop's arguments, by name
    # backward loop results after dx_proj and the state gradients: (T, B, n) per step and row,
    # or, named "sum_*", (T, n) per step summed over the step's active rows (a parameter's
    # gradient reduced in the loop, where its operands are in cache, in a fixed order)
    loop_grads: tuple[str, ...]
    params: tuple[Param, ...]
    # (mode, per-direction weights by name, has bias, layer options such as eps)
    #   -> (bias for x_proj or None, extras, attrs)
    loop_inputs: Callable
    # (x_proj (T,B,G), w_hh, extras) -> (T, B, H, P)
    dims: Callable
    # (T, B, H, P) -> shape of every named tensor of the op (arguments and results)
    shapes: Callable
    # reference forward step: (x_t, states, w_hh, extras, attrs) -> (out, new states, step workspace)
    step: Callable
    # reference backward step, see reference.backward_loop
    step_backward: Callable
    # after the backward loop: (dx_proj, loop_grads, named tensors) -> gradient of the
    # recurrent product h_{t-1} @ W_hh^T, (T, B, G)
    recurrent_grad: Callable
    # (dx_proj, dgh, loop_grads, named tensors) -> gradients of the extras (None where absent);
    # a weight gradient a^T b over all T*B rows is ``named["weight_grad"](a, b)``, the
    # backend's GEMM (fastrnn.ops._run_backward)
    extra_grads: Callable
    # the input side of the gates for one direction, after the GEMM x @ W_ih^T (+ bias):
    # (x_proj (T, B, G), per-direction weights by name, layer options) -> x_proj; None: as is
    project_input: Callable | None = None

    # -- derived names, used to build the op schemas and the backend calls
    @cached_property
    def forward_args(self) -> tuple[str, ...]:
        return (
            "x_proj",
            "w_hh",
            *self.extras,
            *(f"{s}0" for s in self.states),
            "lengths",
            "reverse",
            *(a for a, *_ in self.attrs),
        )

    @cached_property
    def forward_results(self) -> tuple[str, ...]:
        return ("y", *(f"{s}_n" for s in self.states), *self.workspace)

    @cached_property
    def grad_args(self) -> tuple[str, ...]:
        """The backward op's arguments: upstream gradients, then what the forward saved."""
        return (
            "dy",
            *(f"d{s}_n" for s in self.states),
            "w_hh",
            *self.extras,
            *(f"{s}0" for s in self.states),
            "y",
            *self.workspace,
            "lengths",
            "reverse",
            *(a for a, *_ in self.attrs),
        )

    @cached_property
    def grad_results(self) -> tuple[str, ...]:
        return ("dx_proj", "dw_hh", *(f"d{e}" for e in self.extras), *(f"d{s}0" for s in self.states))

    def layer_params(self, bias: bool, proj: bool) -> list[Param]:
        return [p for p in self.params if p.present(bias, proj)]


# ----------------------------------------------------------------------------------------
# Small helpers shared by the steps
# ----------------------------------------------------------------------------------------
def _fold(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    return None if b_ih is None else b_ih + b_hh


def _no_grads(dx, dgh, loop_grads, t):
    return ()


# ----------------------------------------------------------------------------------------
# LSTM (torch.nn's, proj_size included). Gates i, f, g, o.
#   c_t = f*c_{t-1} + i*g,  m_t = o*tanh(c_t),  h_t = m_t (or m_t @ W_hr^T with a projection)
# ----------------------------------------------------------------------------------------
def _lstm_step(x_t, states, w_hh, extras, attrs):
    """One LSTM step. Returns (h_new, (h_new, c_new), (activated gates (B, 4H),))."""
    h, c = states
    (w_hr,) = extras
    gates = x_t + h @ w_hh.t()
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, (h_new, c_new), (torch.cat([i, f, g, o], dim=-1),)


def _lstm_step_backward(s, dh, dstates, w_hh, extras, attrs):
    """One reverse step. ``dh`` reaches h_t (from later steps and y_t), ``dstates`` = (dc,)
    reaches c_t; ``s`` gives the saved tensors of this step (see reference.backward_loop).

        dm = dh @ W_hr (or dh);            do = dm*tanh(c_t)
        dc_t = dc + dm*o*(1 - tanh(c_t)^2)
        di = dc_t*g,  df = dc_t*c_{t-1},  dg = dc_t*i,  dc_{t-1} = dc_t*f
        dgates = [di*i(1-i), df*f(1-f), dg*(1-g^2), do*o(1-o)]
    Returns (dx_proj_t, dgh_t (= dgates_t), no direct term, (dc_{t-1},), (dh_out_t,)).
    """
    (dc,) = dstates
    (w_hr,) = extras
    i, f, g, o = s.gates.chunk(4, dim=-1)
    dm = dh @ w_hr if w_hr is not None else dh
    tc = torch.tanh(s.cs)
    dc_t = dc + dm * o * (1 - tc * tc)
    dg_t = torch.cat(
        [
            dc_t * g * i * (1 - i),
            dc_t * s.prev("cs", "c0") * f * (1 - f),
            dc_t * i * (1 - g * g),
            dm * tc * o * (1 - o),
        ],
        dim=-1,
    )
    return dg_t, dg_t, None, (dc_t * f,), (dh if w_hr is not None else None,)


def _lstm_extra_grads(dx, dgh, loop_grads, t):
    """dW_hr = dh_out^T m with m = o*tanh(c_t): one GEMM over all T*B rows."""
    if t["w_hr"] is None:
        return (None,)
    (dh_out,) = loop_grads
    T, B, H = t["cs"].shape
    m = t["gates"][..., 3 * H :] * torch.tanh(t["cs"])
    return (t["weight_grad"](dh_out.reshape(T * B, t["w_hr"].shape[0]), m.reshape(T * B, H)),)


def _lstm_dims(x_proj, w_hh, extras):
    T, B, G = x_proj.shape
    H = G // 4
    w_hr = extras[0]
    P = (w_hr.shape[0] if w_hr.dim() == 2 else -1) if w_hr is not None else H
    return T, B, H, P


LSTM = Cell(
    name="lstm",
    title="LSTM",
    modes=("LSTM",),
    n_gates=4,
    states=("h", "c"),
    extras=("w_hr",),
    attrs=(),
    workspace=("gates", "cs"),
    saved_states=(1,),
    backward_args=("dy", "dh_n", "dc_n", "w_hh", "w_hr", "c0", "gates", "cs", "lengths", "reverse"),
    loop_grads=("dh_out",),
    params=_nn_params(4, proj=True),
    loop_inputs=lambda mode, w, bias, opts: (_fold(w.get("bias_ih"), w.get("bias_hh")), (w.get("weight_hr"),), ()),
    dims=_lstm_dims,
    shapes=lambda T, B, H, P: {
        "w_hh": (4 * H, P),
        "w_hr": (P, H),
        "h0": (B, P),
        "c0": (B, H),
        "y": (T, B, P),
        "h_n": (B, P),
        "c_n": (B, H),
        "gates": (T, B, 4 * H),
        "cs": (T, B, H),
    },
    step=_lstm_step,
    step_backward=_lstm_step_backward,
    recurrent_grad=lambda dx, loop, t: dx,
    extra_grads=_lstm_extra_grads,
)


# ----------------------------------------------------------------------------------------
# GRU (torch.nn's: b_hn sits inside the reset product). Gates r, z, n.
#   r = sigma(xr + hr), z = sigma(xz + hz), n = tanh(xn + r*hn), hn = h @ W_hn^T + b_hn,
#   h_t = (1-z)*n + z*h_{t-1}
# ----------------------------------------------------------------------------------------
def _gru_step(x_t, states, w_hh, extras, attrs):
    """One GRU step; ``x_t`` (B, 3H) already holds b_ir + b_hr, b_iz + b_hz and b_in.
    Returns (h_new, (h_new,), (acts (B, 4H) = r, z, n, hn,))."""
    (h,) = states
    (b_hn,) = extras
    xr, xz, xn = x_t.chunk(3, dim=-1)
    hr, hz, hn = (h @ w_hh.t()).chunk(3, dim=-1)
    if b_hn is not None:
        hn = hn + b_hn
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h_new = (1 - z) * n + z * h
    return h_new, (h_new,), (torch.cat([r, z, n, hn], dim=-1),)


def _gru_step_backward(s, dh, dstates, w_hh, extras, attrs):
    """dn = dh*(1-z), dz = dh*(h_{t-1} - n), dan = dn*(1-n^2)
    dar = dan*hn*r(1-r),  daz = dz*z(1-z),  dhn = dan*r
    dx_proj_t = [dar, daz, dan];  dgh_t = [dar, daz, dhn] (gradient of h @ W_hh^T)
    dh_{t-1} = dh*z + dgh_t @ W_hh
    """
    r, z, n, hn = s.gates.chunk(4, dim=-1)
    dan = dh * (1 - z) * (1 - n * n)
    dar = dan * hn * r * (1 - r)
    daz = dh * (s.h_prev - n) * z * (1 - z)
    return torch.cat([dar, daz, dan], dim=-1), torch.cat([dar, daz, dan * r], dim=-1), dh * z, (), ()


def _gru_recurrent_grad(dx, loop, t):
    """dgh = [dar, daz, dan * r] from dx_proj = [dar, daz, dan] and the saved r."""
    H = dx.shape[-1] // 3
    return torch.cat([dx[..., : 2 * H], dx[..., 2 * H :] * t["gates"][..., :H]], dim=-1)


def _gru_extra_grads(dx, dgh, loop_grads, t):
    if t["b_hn"] is None:
        return (None,)
    H = dgh.shape[-1] // 3
    return (dgh[..., 2 * H :].sum((0, 1)),)


def _gru_loop_inputs(mode, w, bias, opts):
    if not bias:
        return None, (None,), ()
    b_ih, b_hh = w["bias_ih"], w["bias_hh"]
    H = b_hh.shape[0] // 3
    return b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)]), (b_hh[2 * H :],), ()


GRU = Cell(
    name="gru",
    title="GRU",
    modes=("GRU",),
    n_gates=3,
    states=("h",),
    extras=("b_hn",),
    attrs=(),
    workspace=("gates",),
    saved_states=(),
    backward_args=("dy", "dh_n", "w_hh", "h_prev", "gates", "lengths", "reverse"),
    loop_grads=(),
    params=_nn_params(3, proj=False),
    loop_inputs=_gru_loop_inputs,
    dims=lambda x_proj, w_hh, extras: (*x_proj.shape[:2], x_proj.shape[2] // 3, x_proj.shape[2] // 3),
    shapes=lambda T, B, H, P: {
        "w_hh": (3 * H, H),
        "b_hn": (H,),
        "h0": (B, H),
        "y": (T, B, H),
        "h_n": (B, H),
        "gates": (T, B, 4 * H),
    },
    step=_gru_step,
    step_backward=_gru_step_backward,
    recurrent_grad=_gru_recurrent_grad,
    extra_grads=_gru_extra_grads,
)


# ----------------------------------------------------------------------------------------
# Elman RNN: h_t = act(x_proj_t + h_{t-1} @ W_hh^T), act tanh or relu. act' comes from the
# output (1 - h^2, or [h > 0]), so y is the whole workspace.
# ----------------------------------------------------------------------------------------
NONLINEARITIES = ("tanh", "relu")


def _rnn_step(x_t, states, w_hh, extras, attrs):
    (h,) = states
    (nonlinearity,) = attrs
    a = x_t + h @ w_hh.t()
    if nonlinearity == "tanh":
        h_new = torch.tanh(a)
    elif nonlinearity == "relu":
        h_new = torch.relu(a)
    else:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return h_new, (h_new,), ()


def _rnn_step_backward(s, dh, dstates, w_hh, extras, attrs):
    """da = dh * act'(h_t); dh_{t-1} = da @ W_hh."""
    deriv = 1 - s.y * s.y if attrs[0] == "tanh" else (s.y > 0).to(s.y.dtype)
    da = dh * deriv
    return da, da, None, (), ()


RNN = Cell(
    name="rnn",
    title="RNN",
    modes=("RNN_TANH", "RNN_RELU"),
    n_gates=1,
    states=("h",),
    extras=(),
    attrs=(("nonlinearity", "str", NONLINEARITIES),),
    workspace=(),
    saved_states=(),
    backward_args=("dy", "dh_n", "w_hh", "y", "lengths", "reverse", "nonlinearity"),
    loop_grads=(),
    params=_nn_params(1, proj=False),
    loop_inputs=lambda mode, w, bias, opts: (
        _fold(w.get("bias_ih"), w.get("bias_hh")),
        (),
        ("tanh" if mode == "RNN_TANH" else "relu",),
    ),
    dims=lambda x_proj, w_hh, extras: (*x_proj.shape, x_proj.shape[2]),
    shapes=lambda T, B, H, P: {"w_hh": (H, H), "h0": (B, H), "y": (T, B, H), "h_n": (B, H)},
    step=_rnn_step,
    step_backward=_rnn_step_backward,
    recurrent_grad=lambda dx, loop, t: dx,
    extra_grads=_no_grads,
)


# ----------------------------------------------------------------------------------------
# LSTM variants torch.nn does not have. Both are LSTMs (states h and c, gates i, f, g, o)
# with one more term in the cell; their layers live in fastrnn.variants.
# ----------------------------------------------------------------------------------------
def _c_prev(t: dict) -> Tensor:
    """(T, B, H): the c each step started from. Inactive steps carry c in ``cs`` (the loops
    record the kept state), so the shift is exact with lengths too: in reverse, a sequence's
    last real step t = L-1 reads cs[L], which still holds c0."""
    cs, c0 = t["cs"], t["c0"].unsqueeze(0)
    return torch.cat([cs[1:], c0]) if t["reverse"] else torch.cat([c0, cs[:-1]])


# PeepholeLSTM: the diagonal peepholes p = (p_i, p_f, p_o) (w_ch, 3H) let the cell state feed
# the gates: i and f see c_{t-1}, o sees c_t.
#   i = sig(a_i + p_i*c_{t-1}), f = sig(a_f + p_f*c_{t-1}), g = tanh(a_g)
#   c_t = f*c_{t-1} + i*g,  o = sig(a_o + p_o*c_t),  m_t = o*tanh(c_t),  h_t = m_t (@ W_hr^T)
def _peephole_step(x_t, states, w_hh, extras, attrs):
    h, c = states
    w_hr, w_ch = extras
    a_i, a_f, a_g, a_o = (x_t + h @ w_hh.t()).chunk(4, dim=-1)
    p_i, p_f, p_o = w_ch.chunk(3)
    i, f, g = torch.sigmoid(a_i + p_i * c), torch.sigmoid(a_f + p_f * c), torch.tanh(a_g)
    c_new = f * c + i * g
    o = torch.sigmoid(a_o + p_o * c_new)
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, (h_new, c_new), (torch.cat([i, f, g, o], dim=-1),)


def _peephole_step_backward(s, dh, dstates, w_hh, extras, attrs):
    """As the LSTM's, plus the peephole paths (da_x: gradient of gate x's pre-activation):
    da_o = dm*tanh(c_t)*o(1-o);   dc_t = dc + dm*o*(1 - tanh(c_t)^2) + da_o*p_o
    da_i, da_f, da_g as the LSTM's from dc_t;   dc_{t-1} = dc_t*f + da_i*p_i + da_f*p_f
    """
    (dc,) = dstates
    w_hr, w_ch = extras
    p_i, p_f, p_o = w_ch.chunk(3)
    i, f, g, o = s.gates.chunk(4, dim=-1)
    dm = dh @ w_hr if w_hr is not None else dh
    tc = torch.tanh(s.cs)
    da_o = dm * tc * o * (1 - o)
    dc_t = dc + dm * o * (1 - tc * tc) + da_o * p_o
    da_i = dc_t * g * i * (1 - i)
    da_f = dc_t * s.prev("cs", "c0") * f * (1 - f)
    dg_t = torch.cat([da_i, da_f, dc_t * i * (1 - g * g), da_o], dim=-1)
    return dg_t, dg_t, None, (dc_t * f + da_i * p_i + da_f * p_f,), (dh if w_hr is not None else None,)


def _peephole_extra_grads(dx, dgh, loop_grads, t):
    """dW_hr as the LSTM's; dp_i = sum da_i*c_{t-1}, dp_f = sum da_f*c_{t-1}, dp_o = sum da_o*c_t
    over all T*B rows (inactive rows have da = 0)."""
    (dw_hr,) = _lstm_extra_grads(dx, dgh, loop_grads, t)
    H = t["cs"].shape[-1]
    c_prev = _c_prev(t)
    dp = torch.cat(
        [
            (dx[..., :H] * c_prev).sum((0, 1)),
            (dx[..., H : 2 * H] * c_prev).sum((0, 1)),
            (dx[..., 3 * H :] * t["cs"]).sum((0, 1)),
        ]
    )
    return dw_hr, dp


PEEPHOLE_LSTM = Cell(
    name="peephole_lstm",
    title="PeepholeLSTM",
    modes=("PEEPHOLE_LSTM",),
    n_gates=4,
    states=("h", "c"),
    extras=("w_hr", "w_ch"),
    attrs=(),
    workspace=("gates", "cs"),
    saved_states=(1,),
    backward_args=("dy", "dh_n", "dc_n", "w_hh", "w_hr", "w_ch", "c0", "gates", "cs", "lengths", "reverse"),
    loop_grads=("dh_out",),
    params=(*_nn_params(4, proj=True), Param("weight_ch", lambda i, h, p: (3 * h,))),
    loop_inputs=lambda mode, w, bias, opts: (
        _fold(w.get("bias_ih"), w.get("bias_hh")),
        (w.get("weight_hr"), w["weight_ch"]),
        (),
    ),
    dims=_lstm_dims,
    shapes=lambda T, B, H, P: {**LSTM.shapes(T, B, H, P), "w_ch": (3 * H,)},
    step=_peephole_step,
    step_backward=_peephole_step_backward,
    recurrent_grad=lambda dx, loop, t: dx,
    extra_grads=_peephole_extra_grads,
)


# LayerNormLSTM: LayerNorm on the recurrent product (over the 4H gate vector) and on the new
# cell state (over H); the input side, LN_ih(x @ W_ih^T), is normalised for all steps at
# once before the loop (project_input). The normalised c is the carried state.
#   a = x_proj_t + LN_hh(h_{t-1} @ W_hh^T);  i, f, o = sig(.), g = tanh(.)
#   c_t = LN_c(f*c_{t-1} + i*g);  h_t = o*tanh(c_t)
# LN(v) = vhat*w + b, vhat = (v - mean v)*rstd, rstd = 1/sqrt(var v + eps) (biased variance).
# Workspace row ws (9H + 2) = [i, f, g, o | rhat (4H) | shat (H) | rstd_r, rstd_s]: the
# activations, the normalised product r and pre-norm state s, and their 1/std.
def _layer_norm(v: Tensor, w: Tensor, b: Tensor | None, eps: float):
    mu = v.mean(-1, keepdim=True)
    d = v - mu
    rstd = torch.rsqrt((d * d).mean(-1, keepdim=True) + eps)
    vhat = d * rstd
    return (vhat * w if b is None else vhat * w + b), vhat, rstd


def _layer_norm_backward(dvhat: Tensor, vhat: Tensor, rstd: Tensor) -> Tensor:
    """The gradient reaching v from the gradient reaching vhat."""
    return rstd * (dvhat - dvhat.mean(-1, keepdim=True) - vhat * (dvhat * vhat).mean(-1, keepdim=True))


def _ln_step(x_t, states, w_hh, extras, attrs):
    h, c = states
    w_r, b_r, w_c, b_c = extras
    (eps,) = attrs
    r, rhat, rstd_r = _layer_norm(h @ w_hh.t(), w_r, b_r, eps)
    a_i, a_f, a_g, a_o = (x_t + r).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c_new, shat, rstd_s = _layer_norm(f * c + i * g, w_c, b_c, eps)
    h_new = o * torch.tanh(c_new)
    return h_new, (h_new, c_new), (torch.cat([i, f, g, o, rhat, shat, rstd_r, rstd_s], dim=-1),)


def _ln_split(ws: Tensor):
    """gates (4H), rhat (4H), shat (H), rstd_r (1), rstd_s (1) of workspace rows (.., 9H + 2)."""
    H = (ws.shape[-1] - 2) // 9
    return ws[..., : 4 * H], ws[..., 4 * H : 8 * H], ws[..., 8 * H : 9 * H], ws[..., -2:-1], ws[..., -1:]


def _ln_step_backward(s, dh, dstates, w_hh, extras, attrs):
    """dc_t = dc + dh*o*(1 - tanh(c_t)^2) reaches LN_c's output; ds = LN'(dc_t*w_c) reaches
    s = f*c_{t-1} + i*g; the gate gradients follow as the LSTM's with ds for dc_t, and
    dc_{t-1} = ds*f. dx_proj_t = da; the product's gradient dgh_t = LN'(da*w_r).
    Loop results: dgh_t, and per step, summed over the batch, the gradients of the LN gains
    and shifts: da*rhat, da, dc_t*shat, dc_t."""
    (dc,) = dstates
    w_r, _, w_c, _ = extras
    gates, rhat, shat, rstd_r, rstd_s = _ln_split(s.ws)
    i, f, g, o = gates.chunk(4, dim=-1)
    tc = torch.tanh(s.cs)
    dc_t = dc + dh * o * (1 - tc * tc)
    ds = _layer_norm_backward(dc_t * w_c, shat, rstd_s)
    da = torch.cat(
        [
            ds * g * i * (1 - i),
            ds * s.prev("cs", "c0") * f * (1 - f),
            ds * i * (1 - g * g),
            dh * tc * o * (1 - o),
        ],
        dim=-1,
    )
    dgh = _layer_norm_backward(da * w_r, rhat, rstd_r)
    return da, dgh, None, (ds * f,), (dgh, da * rhat, da, dc_t * shat, dc_t)


def _ln_extra_grads(dx, dgh, loop_grads, t):
    _, da_rhat, da, dc_shat, dc = loop_grads
    return (
        da_rhat.sum(0),
        None if t["ln_hh_bias"] is None else da.sum(0),
        dc_shat.sum(0),
        None if t["ln_c_bias"] is None else dc.sum(0),
    )


def _ln_project_input(x_proj, w, opts):
    return torch.nn.functional.layer_norm(
        x_proj, (x_proj.shape[-1],), w["ln_ih_weight"], w.get("ln_ih_bias"), opts["eps"]
    )


def _gates(i, h, p):
    return (4 * h,)


LAYERNORM_LSTM = Cell(
    name="layernorm_lstm",
    title="LayerNormLSTM",
    modes=("LAYERNORM_LSTM",),
    n_gates=4,
    states=("h", "c"),
    extras=("ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias"),
    attrs=(("eps", "float", None),),
    workspace=("ws", "cs"),
    saved_states=(1,),
    backward_args=(
        "dy",
        "dh_n",
        "dc_n",
        "w_hh",
        "ln_hh_weight",
        "ln_c_weight",
        "c0",
        "ws",
        "cs",
        "lengths",
        "reverse",
    ),
    loop_grads=("dgh", "sum_da_rhat", "sum_da", "sum_dc_shat", "sum_dc"),
    params=(
        Param("weight_ih", lambda i, h, p: (4 * h, i)),
        Param("weight_hh", lambda i, h, p: (4 * h, h)),
        Param("ln_ih_weight", _gates, init="ones"),
        Param("ln_ih_bias", _gates, "bias", init="zeros"),
        Param("ln_hh_weight", _gates, init="ones"),
        Param("ln_hh_bias", _gates, "bias", init="zeros"),
        Param("ln_c_weight", lambda i, h, p: (h,), init="ones"),
        Param("ln_c_bias", lambda i, h, p: (h,), "bias", init="zeros"),
    ),
    loop_inputs=lambda mode, w, bias, opts: (
        None,
        (w["ln_hh_weight"], w.get("ln_hh_bias"), w["ln_c_weight"], w.get("ln_c_bias")),
        (float(opts["eps"]),),
    ),
    dims=lambda x_proj, w_hh, extras: (*x_proj.shape[:2], x_proj.shape[2] // 4, x_proj.shape[2] // 4),
    shapes=lambda T, B, H, P: {
        "w_hh": (4 * H, H),
        "ln_hh_weight": (4 * H,),
        "ln_hh_bias": (4 * H,),
        "ln_c_weight": (H,),
        "ln_c_bias": (H,),
        "h0": (B, H),
        "c0": (B, H),
        "y": (T, B, H),
        "h_n": (B, H),
        "c_n": (B, H),
        "ws": (T, B, 9 * H + 2),
        "cs": (T, B, H),
    },
    step=_ln_step,
    step_backward=_ln_step_backward,
    recurrent_grad=lambda dx, loop, t: loop[0],
    extra_grads=_ln_extra_grads,
    project_input=_ln_project_input,
)

# the cells of torch.nn (each has a drop-in layer subclassing its torch.nn twin)
TORCH_NN: tuple[Cell, ...] = (LSTM, GRU, RNN)
CELLS: dict[str, Cell] = {c.name: c for c in (LSTM, GRU, RNN, PEEPHOLE_LSTM, LAYERNORM_LSTM)}
_BY_MODE = {mode: c for c in CELLS.values() for mode in c.modes}


def for_mode(mode: str) -> Cell:
    """The cell that runs a torch.nn mode string ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")."""
    return _BY_MODE[mode]
