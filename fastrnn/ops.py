"""The recurrence ops, registered with torch.library.

``torch.ops.fastrnn.{lstm,gru,rnn}_recurrence`` run one layer and one direction over a whole
sequence; ``*_recurrence_backward`` is its reverse-time backward. Each op has a fake
(meta) implementation, so torch.compile traces a model through it as one opaque node, and
its autograd formula is registered with ``register_autograd``: the backward op returns
``dx_proj`` (which ordinary autograd carries on to W_ih, the biases and the input) and the
gradients of ``w_hh``, ``w_hr``/``b_hn`` and the initial state.

The last argument, ``backend``, is a resolved backend name (see :mod:`fastrnn.backends`).
Double backward: when the backward itself runs under ``create_graph=True`` the gradients
are recomputed by autograd through the reference cells, which is exact and differentiable
for every backend (at the reference's speed).

Op signatures (time-major; G = gate width, P = output width):

* ``lstm_recurrence(x_proj (T,B,4H), w_hh (4H,P), w_hr (P,H)?, h0 (B,P), c0 (B,H),
  lengths (B,)?, reverse, backend) -> (y (T,B,P), h_n, c_n, gates (T,B,4H), cs (T,B,H))``
* ``gru_recurrence(x_proj (T,B,3H), w_hh (3H,H), b_hn (H,)?, h0 (B,H), lengths?, reverse,
  backend) -> (y, h_n, gates (T,B,4H))``
* ``rnn_recurrence(x_proj (T,B,H), w_hh (H,H), h0 (B,H), lengths?, reverse, nonlinearity,
  backend) -> (y, h_n)``

``gates`` and ``cs`` are the workspace the backward needs, kept in fp32 for fp16/bf16.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends, reference
from .reference import acc_dtype

__all__ = ["lstm_recurrence", "gru_recurrence", "rnn_recurrence", "lstm", "gru", "rnn"]


# ----------------------------------------------------------------------------------------
# Argument checks shared by every backend (the C++ entry points check again).
# ----------------------------------------------------------------------------------------
def _shape_error(name: str, t: Tensor, expected) -> RuntimeError:
    return RuntimeError(f"fastrnn: {name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def _check_x(x_proj: Tensor, gate_mult: int, lengths: Optional[Tensor]) -> tuple[int, int, int]:
    """Validate x_proj and lengths; returns (T, B, H)."""
    if x_proj.dim() != 3:
        raise RuntimeError(f"fastrnn: x_proj must be 3-D (T, B, G), got {x_proj.dim()}-D")
    T, B, G = x_proj.shape
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if not x_proj.is_floating_point():
        raise RuntimeError(f"fastrnn: x_proj must be a floating tensor, got {x_proj.dtype}")
    if G % gate_mult:
        raise RuntimeError(f"fastrnn: x_proj's last dim {G} is not a multiple of {gate_mult}")
    if lengths is not None:
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,):
            raise RuntimeError(
                f"fastrnn: lengths must be an int64 tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if lengths.device != x_proj.device:
            raise RuntimeError(f"fastrnn: lengths is on {lengths.device}, expected {x_proj.device}")
    return T, B, G // gate_mult


def _check_like(x_proj: Tensor, named: dict) -> None:
    """Each named (tensor or None, expected shape) has x_proj's dtype and device, and that shape."""
    for name, (t, shape) in named.items():
        if t is None:
            continue
        if t.dtype != x_proj.dtype:
            raise RuntimeError(f"fastrnn: {name} has dtype {t.dtype}, expected {x_proj.dtype} like x_proj")
        if t.device != x_proj.device:
            raise RuntimeError(f"fastrnn: {name} is on {t.device}, expected {x_proj.device} like x_proj")
        if tuple(t.shape) != tuple(shape):
            raise _shape_error(name, t, shape)


def _fresh(out: tuple, inputs: tuple) -> tuple:
    """Custom ops may not return an input, a view of one, or two views of one buffer: copy
    any output whose storage was already seen (cheap insurance over every backend)."""
    def key(t):
        return t.untyped_storage().data_ptr() if t.numel() else None

    seen = {key(t) for t in inputs if isinstance(t, Tensor)} - {None}
    res = []
    for t in out:
        k = key(t)
        if k is not None and k in seen:
            t = t.clone()
            k = key(t)
        seen.add(k)
        res.append(t)
    return tuple(res)


def _native(backend: str, args: tuple) -> tuple[tuple, Optional[torch.dtype]]:
    """``args`` in a dtype ``backend`` runs, and the half dtype to return results in (or None).

    float16/bfloat16 on a backend with float32 kernels only (cpp): the operands are widened
    to float32, which is exact, the recurrence runs with float32 state and accumulation as
    every backend's half policy asks, and the results are rounded back to the input dtype."""
    low = args[0].dtype
    if backends.native_dtype(backend, low) == low:
        return args, None
    return tuple(a.float() if isinstance(a, Tensor) and a.dtype == low else a for a in args), low


def _narrow(out: tuple, low: Optional[torch.dtype], n: int) -> tuple:
    """The first ``n`` results back in ``low`` (the rest is float32 workspace either way)."""
    if low is None:
        return out
    return tuple(t.to(low) if i < n and t is not None else t for i, t in enumerate(out))


def _forward(backend: str, entry: str, args: tuple, workspace: bool, n_state: int) -> tuple:
    """Run a backend's forward. ``workspace=False`` (an eager call under no_grad: no
    backward will follow) lets a backend that supports it skip the per-step state the
    backward needs, which is O(T*B*4H) memory; the workspace outputs are then empty.
    The first ``n_state`` outputs (y and the final state) are in the input dtype."""
    fn = backends.implementation(backend, entry)
    native, low = _native(backend, args)
    if not workspace and backends.workspace_optional(backend):
        out = fn(*native, workspace=False)
    else:
        out = fn(*native)
    return _fresh(_narrow(tuple(out), low, n_state), args)


def _backward(backend: str, entry: str, args: tuple) -> tuple:
    """Run a backend's backward; every gradient is in the dtype of the upstream gradient."""
    native, low = _native(backend, args)
    out = backends.implementation(backend, entry)(*native)
    return _narrow(tuple(out), low, len(out))


def _no_tensor(like: Tensor) -> Tensor:
    """Stands for an absent gradient (custom ops return Tensors, not None)."""
    return like.new_empty(0)


# ----------------------------------------------------------------------------------------
# Eager fast path. The registered ops are the entry point whenever anything traces or
# transforms the call (torch.compile, FakeTensor, functorch, a dispatch or function mode,
# tensor subclasses): that is what makes the model compile into one node per op. In plain
# eager mode the same op bodies and the same setup_context/backward functions run through
# an ordinary autograd.Function instead, skipping the dispatcher round trip and the
# custom-op autograd wrapper (measured on the 2-core CPU: ~30 us per forward call and
# several hundred us per LSTM backward, T=100, B=1, H=64). Numerics are identical: both
# routes call the same backend functions.
# ----------------------------------------------------------------------------------------
_PLAIN = (Tensor, torch.nn.Parameter)


def _eager(args) -> bool:
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    if torch._C._is_torch_function_mode_enabled():
        return False
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    # is_grads_batched backwards (and gradcheck's batched-grad check) reach the backward with
    # batched tensors: those go through the dispatcher, whose batching fallback runs the
    # backward op once per gradient in the batch
    is_batched = torch._C._functorch.is_batchedtensor
    is_legacy = torch._C._functorch.is_legacy_batchedtensor
    return all(type(a) in _PLAIN and not is_wrapped(a) and not is_batched(a) and not is_legacy(a)
               for a in args if isinstance(a, Tensor))


def _call(op, body, *args):
    """``op(*args)`` through the dispatcher, or its body directly in plain eager mode."""
    return body(*args) if _eager(args) else op(*args)


def _entry(op, body, function, inference=None):
    """The public call of a forward op: dispatcher, autograd.Function, or (no gradient
    needed) the plain body, or ``inference`` where the op has a workspace to skip."""

    def call(*args):
        if not _eager(args):
            return op(*args)
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return function.apply(*args)
        return (inference or body)(*args)

    call.__name__ = op._qualified_op_name.split("::")[-1]
    return call


def _function(name, body, setup_context, backward, n_differentiable):
    """The eager autograd.Function of a forward op whose first ``n_differentiable`` outputs
    carry gradients (y, h_n[, c_n]); the rest are the backward's workspace."""
    # forward(ctx, ...) rather than a separate setup_context staticmethod: with the latter,
    # Function.apply binds the arguments through inspect.signature on every call (~70 us).
    def forward(ctx, *args):
        out = body(*args)
        setup_context(ctx, args, out)
        # Autograd would otherwise fill a zero gradient for every output the loss does not
        # use, the (T, B, 4H) workspace included: ~0.5 ms of memset per LSTM backward at
        # T=100, B=8, H=128 here. Only the state outputs get zeros, made below on demand.
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*out[n_differentiable:])
        ctx.grad_like = [(o.shape, o.dtype, o.device) for o in out[:n_differentiable]]
        return out

    def backward_(ctx, *grads):
        grads = [g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                 for g, (shape, dtype, device) in zip(grads, ctx.grad_like)] + list(grads[n_differentiable:])
        return backward(ctx, *grads)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward_),
    })


# ----------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------
def _lstm_recurrence_body(
    x_proj: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _lstm_run(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, backend, True)


def _lstm_run(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, backend, workspace):
    T, B, H = _check_x(x_proj, 4, lengths)
    P = (w_hr.shape[0] if w_hr.dim() == 2 else -1) if w_hr is not None else H
    _check_like(x_proj, {"w_hh": (w_hh, (4 * H, P)), "w_hr": (w_hr, (P, H)),
                         "h0": (h0, (B, P)), "c0": (c0, (B, H))})
    return _forward(backend, "lstm_recurrence_forward", (x_proj, w_hh, w_hr, h0, c0, lengths, reverse), workspace, 3)


lstm_recurrence = torch.library.custom_op("fastrnn::lstm_recurrence", _lstm_recurrence_body, mutates_args=())


@lstm_recurrence.register_fake
def _(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, backend):
    T, B, G = x_proj.shape
    H, P = G // 4, w_hh.shape[1]
    acc = acc_dtype(x_proj.dtype)
    return (x_proj.new_empty(T, B, P), x_proj.new_empty(B, P), x_proj.new_empty(B, H),
            x_proj.new_empty(T, B, G, dtype=acc), x_proj.new_empty(T, B, H, dtype=acc))


def _lstm_recurrence_backward_body(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    y: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, dw_hh, dw_hr, dh0, dc0 = _backward(backend, "lstm_recurrence_backward",
                                           (dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse))
    if dw_hr is None:
        dw_hr = _no_tensor(dy)
    return _fresh((dx, dw_hh, dw_hr, dh0, dc0), (dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs))


lstm_recurrence_backward = torch.library.custom_op("fastrnn::lstm_recurrence_backward", _lstm_recurrence_backward_body, mutates_args=())


@lstm_recurrence_backward.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse, backend):
    T, B, G = gates.shape
    dw_hr = dy.new_empty(w_hr.shape) if w_hr is not None else dy.new_empty(0)
    return (dy.new_empty(T, B, G), dy.new_empty(w_hh.shape), dw_hr,
            dy.new_empty(h0.shape), dy.new_empty(c0.shape))


def _lstm_setup(ctx, inputs, output):
    x_proj, w_hh, w_hr, h0, c0, lengths, reverse, backend = inputs
    y, _, _, gates, cs = output
    ctx.save_for_backward(x_proj, w_hh, w_hr, h0, c0, lengths, y, gates, cs)
    ctx.reverse, ctx.backend = reverse, backend


def _lstm_backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    x_proj, w_hh, w_hr, h0, c0, lengths, y, gates, cs = ctx.saved_tensors
    if torch.is_grad_enabled():
        grads = _differentiable_grads(
            lambda *a: reference.lstm_recurrence(*a, lengths, ctx.reverse),
            (x_proj, w_hh, w_hr, h0, c0), (dy, dh_n, dc_n))
        return (*grads, None, None, None)
    dx, dw_hh, dw_hr, dh0, dc0 = _call(torch.ops.fastrnn.lstm_recurrence_backward, _lstm_recurrence_backward_body,
        dy, dh_n, dc_n, w_hh, w_hr, h0, c0, y, gates, cs, lengths, ctx.reverse, ctx.backend)
    return dx, dw_hh, (dw_hr if w_hr is not None else None), dh0, dc0, None, None, None


lstm_recurrence.register_autograd(_lstm_backward, setup_context=_lstm_setup)
lstm = _entry(torch.ops.fastrnn.lstm_recurrence, _lstm_recurrence_body,
              _function("LSTMRecurrence", _lstm_recurrence_body, _lstm_setup, _lstm_backward, 3),
              lambda *args: _lstm_run(*args, False))


# ----------------------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------------------
def _gru_recurrence_body(
    x_proj: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _gru_run(x_proj, w_hh, b_hn, h0, lengths, reverse, backend, True)


def _gru_run(x_proj, w_hh, b_hn, h0, lengths, reverse, backend, workspace):
    T, B, H = _check_x(x_proj, 3, lengths)
    _check_like(x_proj, {"w_hh": (w_hh, (3 * H, H)), "b_hn": (b_hn, (H,)), "h0": (h0, (B, H))})
    return _forward(backend, "gru_recurrence_forward", (x_proj, w_hh, b_hn, h0, lengths, reverse), workspace, 2)


gru_recurrence = torch.library.custom_op("fastrnn::gru_recurrence", _gru_recurrence_body, mutates_args=())


@gru_recurrence.register_fake
def _(x_proj, w_hh, b_hn, h0, lengths, reverse, backend):
    T, B, G = x_proj.shape
    H = G // 3
    return (x_proj.new_empty(T, B, H), x_proj.new_empty(B, H),
            x_proj.new_empty(T, B, 4 * H, dtype=acc_dtype(x_proj.dtype)))


def _gru_recurrence_backward_body(
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    y: Tensor,
    gates: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw_hh, db_hn, dh0 = _backward(backend, "gru_recurrence_backward",
                                      (dy, dh_n, w_hh, b_hn, h0, y, gates, lengths, reverse))
    if db_hn is None:
        db_hn = _no_tensor(dy)
    return _fresh((dx, dw_hh, db_hn, dh0), (dy, dh_n, w_hh, b_hn, h0, y, gates))


gru_recurrence_backward = torch.library.custom_op("fastrnn::gru_recurrence_backward", _gru_recurrence_backward_body, mutates_args=())


@gru_recurrence_backward.register_fake
def _(dy, dh_n, w_hh, b_hn, h0, y, gates, lengths, reverse, backend):
    T, B, H4 = gates.shape
    db_hn = dy.new_empty(b_hn.shape) if b_hn is not None else dy.new_empty(0)
    return dy.new_empty(T, B, 3 * (H4 // 4)), dy.new_empty(w_hh.shape), db_hn, dy.new_empty(h0.shape)


def _gru_setup(ctx, inputs, output):
    x_proj, w_hh, b_hn, h0, lengths, reverse, backend = inputs
    y, _, gates = output
    ctx.save_for_backward(x_proj, w_hh, b_hn, h0, lengths, y, gates)
    ctx.reverse, ctx.backend = reverse, backend


def _gru_backward(ctx, dy, dh_n, _dgates):
    x_proj, w_hh, b_hn, h0, lengths, y, gates = ctx.saved_tensors
    if torch.is_grad_enabled():
        grads = _differentiable_grads(
            lambda *a: reference.gru_recurrence(*a, lengths, ctx.reverse),
            (x_proj, w_hh, b_hn, h0), (dy, dh_n))
        return (*grads, None, None, None)
    dx, dw_hh, db_hn, dh0 = _call(torch.ops.fastrnn.gru_recurrence_backward, _gru_recurrence_backward_body,
        dy, dh_n, w_hh, b_hn, h0, y, gates, lengths, ctx.reverse, ctx.backend)
    return dx, dw_hh, (db_hn if b_hn is not None else None), dh0, None, None, None


gru_recurrence.register_autograd(_gru_backward, setup_context=_gru_setup)
gru = _entry(torch.ops.fastrnn.gru_recurrence, _gru_recurrence_body,
             _function("GRURecurrence", _gru_recurrence_body, _gru_setup, _gru_backward, 2),
             lambda *args: _gru_run(*args, False))


# ----------------------------------------------------------------------------------------
# Elman RNN (tanh / relu)
# ----------------------------------------------------------------------------------------
def _rnn_recurrence_body(
    x_proj: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    nonlinearity: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    T, B, H = _check_x(x_proj, 1, lengths)
    _check_like(x_proj, {"w_hh": (w_hh, (H, H)), "h0": (h0, (B, H))})
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"fastrnn: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return _forward(backend, "rnn_recurrence_forward", (x_proj, w_hh, h0, lengths, reverse, nonlinearity), True, 2)


rnn_recurrence = torch.library.custom_op("fastrnn::rnn_recurrence", _rnn_recurrence_body, mutates_args=())


@rnn_recurrence.register_fake
def _(x_proj, w_hh, h0, lengths, reverse, nonlinearity, backend):
    T, B, H = x_proj.shape
    return x_proj.new_empty(T, B, H), x_proj.new_empty(B, H)


def _rnn_recurrence_backward_body(
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    y: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    nonlinearity: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    out = _backward(backend, "rnn_recurrence_backward", (dy, dh_n, w_hh, h0, y, lengths, reverse, nonlinearity))
    return _fresh(out, (dy, dh_n, w_hh, h0, y))


rnn_recurrence_backward = torch.library.custom_op("fastrnn::rnn_recurrence_backward", _rnn_recurrence_backward_body, mutates_args=())


@rnn_recurrence_backward.register_fake
def _(dy, dh_n, w_hh, h0, y, lengths, reverse, nonlinearity, backend):
    return dy.new_empty(y.shape), dy.new_empty(w_hh.shape), dy.new_empty(h0.shape)


def _rnn_setup(ctx, inputs, output):
    x_proj, w_hh, h0, lengths, reverse, nonlinearity, backend = inputs
    ctx.save_for_backward(x_proj, w_hh, h0, lengths, output[0])
    ctx.reverse, ctx.nonlinearity, ctx.backend = reverse, nonlinearity, backend


def _rnn_backward(ctx, dy, dh_n):
    x_proj, w_hh, h0, lengths, y = ctx.saved_tensors
    if torch.is_grad_enabled():
        grads = _differentiable_grads(
            lambda *a: reference.rnn_recurrence(*a, lengths, ctx.reverse, ctx.nonlinearity),
            (x_proj, w_hh, h0), (dy, dh_n))
        return (*grads, None, None, None, None)
    dx, dw_hh, dh0 = _call(torch.ops.fastrnn.rnn_recurrence_backward, _rnn_recurrence_backward_body,
        dy, dh_n, w_hh, h0, y, lengths, ctx.reverse, ctx.nonlinearity, ctx.backend)
    return dx, dw_hh, dh0, None, None, None, None


rnn_recurrence.register_autograd(_rnn_backward, setup_context=_rnn_setup)
rnn = _entry(torch.ops.fastrnn.rnn_recurrence, _rnn_recurrence_body,
             _function("RNNRecurrence", _rnn_recurrence_body, _rnn_setup, _rnn_backward, 2))


# ----------------------------------------------------------------------------------------
# Double backward
# ----------------------------------------------------------------------------------------
def _differentiable_grads(recurrence, inputs: tuple, grad_outputs: tuple) -> list:
    """Gradients of ``recurrence(*inputs)`` that autograd can differentiate again.

    Used when a backward runs with create_graph=True (gradient penalties, MAML,
    Hessian-vector products): the forward is recomputed through the reference cells with
    autograd recording, and differentiated with create_graph=True.
    """
    with torch.enable_grad():
        outs = recurrence(*inputs)
        wrt = [t for t in inputs if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(outs, wrt, grad_outputs, create_graph=True, allow_unused=True))
    return [next(found) if t is not None and t.requires_grad else None for t in inputs]
