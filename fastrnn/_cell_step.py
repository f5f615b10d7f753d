"""One native call per cell step: torch.nn's cells on the ``"cpp"`` backend in plain eager mode.

A cell is stepped from Python once per time step, so its cost is a per-call cost. Through
the sequence machinery (input projection, the recurrence op with T = 1, the generic
backward) a step cost 2-3x torch.nn's; here a step is one call of ``fastrnn._C`` forward
and one backward, under one autograd node: the two gate products through torch's BLAS as
torch.nn computes them, the pointwise math of the C++ backend's cells.

Calls this path cannot serve exactly (transforms, tracing, autocast, other dtypes or
devices; see :func:`serves`) take the general route of :func:`fastrnn.functional.cell_step`.
A backward under ``create_graph=True`` recomputes the step through the reference
equations with autograd recording, as the recurrence ops do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _cpp, cells, ops

_C = _cpp._C
_FLOATS = (torch.float32, torch.float64)
_NONLINEARITY = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}


def serves(mode: str, input: Tensor, states: tuple, weights: tuple) -> bool:
    """Whether a step of ``mode`` on these tensors may take the one-call path (the caller
    resolved the backend to "cpp" and checked autocast is off). Devices are not compared
    here: resolve() put input on the CPU, the module checked the states against it, and
    the C++ entries refuse a weight on another device."""
    if mode not in _MODES or input.dtype not in _FLOATS:
        return False
    return ops.plain_eager((input, *states, *weights))


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def _create_graph_grads(mode: str, inputs: tuple, grads: tuple) -> tuple:
    """Gradients by autograd through the step recomputed with the reference equations:
    differentiable again (create_graph=True) and fit for batched upstream gradients."""
    from .functional import cell_step  # functional routes here: import on use

    n_states = len(cells.for_mode(mode).states)

    def reference_step(x, *rest):
        states, (w_ih, w_hh, b_ih, b_hh) = rest[:n_states], rest[n_states:]
        weights = {"weight_ih": w_ih, "weight_hh": w_hh}
        if b_ih is not None:
            weights.update(bias_ih=b_ih, bias_hh=b_hh)
        hx = states if n_states > 1 else states[0]
        out = cell_step(mode, x, hx, weights, bias=b_ih is not None, backend="reference")
        return out if n_states > 1 else (out,)

    states = inputs[1 : 1 + n_states]
    grads = tuple(_zeros_if_none(g, s) for g, s in zip(grads, states, strict=True))
    return tuple(ops._differentiable_grads(reference_step, inputs, grads))


def _composite(*grads) -> bool:
    """Whether a backward must be differentiable or batched (create_graph=True, or batched
    upstream gradients from is_grads_batched / gradcheck): then the step is recomputed
    through the reference equations and autograd differentiates that."""
    return torch.is_grad_enabled() or not ops._eager(grads)


class _LSTMStep(torch.autograd.Function):
    # forward(ctx, ...) rather than a separate setup_context: Function.apply then skips
    # binding the arguments through inspect.signature on every call
    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh):
        h1, c1, gates = _C.lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, gates, c1)
        ctx.set_materialize_grads(False)
        return h1, c1

    @staticmethod
    def backward(ctx, dh, dc):
        x, h, c, w_ih, w_hh, b_ih, b_hh, gates, c1 = ctx.saved_tensors
        if _composite(dh, dc):
            return _create_graph_grads("LSTM", (x, h, c, w_ih, w_hh, b_ih, b_hh), (dh, dc))
        n = ctx.needs_input_grad
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = _C.lstm_cell_backward(
            _zeros_if_none(dh, h),
            _zeros_if_none(dc, c),
            x,
            h,
            c,
            w_ih,
            w_hh,
            gates,
            c1,
            [n[0], n[1], n[3], n[4], n[5], n[6]],
        )
        return dx, dh0, dc0 if n[2] else None, dw_ih, dw_hh, db_ih, db_hh


def _one_state_step(mode: str, forward, backward):
    """The autograd Function of a cell with one state h (GRU, RNN): ``forward(x, h, w_ih,
    w_hh, b_ih, b_hh) -> (h1, saved)``, where ``saved`` is what ``backward(dh, x, h, w_ih,
    w_hh, saved, needs_input_grad)`` takes besides the inputs."""

    class _Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h, w_ih, w_hh, b_ih, b_hh):
            h1, saved = forward(x, h, w_ih, w_hh, b_ih, b_hh)
            ctx.save_for_backward(x, h, w_ih, w_hh, b_ih, b_hh, saved)
            return h1

        @staticmethod
        def backward(ctx, dh):
            x, h, w_ih, w_hh, b_ih, b_hh, saved = ctx.saved_tensors
            if _composite(dh):
                return _create_graph_grads(mode, (x, h, w_ih, w_hh, b_ih, b_hh), (dh,))
            return tuple(backward(dh, x, h, w_ih, w_hh, saved, list(ctx.needs_input_grad)))

    return _Step


_GRUStep = _one_state_step(
    "GRU", lambda *args: _C.gru_cell_forward(*args, True), lambda *args: _C.gru_cell_backward(*args)
)


def _rnn_step(nonlinearity: str):
    def forward(*args):
        h1, _ = _C.rnn_cell_forward(*args, nonlinearity)
        return h1, h1  # the backward takes the output itself

    def backward(dh, x, h, w_ih, w_hh, h1, needs):
        return _C.rnn_cell_backward(dh, x, h, w_ih, w_hh, h1, nonlinearity, needs)

    return _one_state_step(f"RNN_{nonlinearity.upper()}", forward, backward)


_MODES = {"LSTM": _LSTMStep, "GRU": _GRUStep, "RNN_TANH": _rnn_step("tanh"), "RNN_RELU": _rnn_step("relu")}


def step(mode: str, input: Tensor, states: tuple, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh):
    """One step: (h, c) for LSTM, h otherwise. ``serves`` said yes."""
    args = (input, *states, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args):
        return _MODES[mode].apply(*args)
    # no backward will follow: the forward alone, no workspace kept
    if mode == "LSTM":
        h1, c1, _ = _C.lstm_cell_forward(input, *states, w_ih, w_hh, b_ih, b_hh, False)
        return h1, c1
    if mode == "GRU":
        return _C.gru_cell_forward(input, states[0], w_ih, w_hh, b_ih, b_hh, False)[0]
    return _C.rnn_cell_forward(input, states[0], w_ih, w_hh, b_ih, b_hh, _NONLINEARITY[mode])[0]
