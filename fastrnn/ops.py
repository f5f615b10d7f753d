"""The recurrence ops: one torch.library custom op per cell, built from its spec.

``torch.ops.fastrnn.<cell>_recurrence`` runs one layer and one direction over a whole
sequence; ``<cell>_recurrence_backward`` is its backward. Both have fake (meta) kernels, so
torch.compile traces a model through them as opaque nodes, and the forward's autograd
formula is registered with ``register_autograd``. Arguments and results are named by the
spec (:mod:`fastrnn.cells`); for the cells of torch.nn:

* ``lstm_recurrence(x_proj (T,B,4H), w_hh (4H,P), w_hr (P,H)?, h0 (B,P), c0 (B,H), lengths (B,)?,
  reverse, backend, workspace=True) -> (y (T,B,P), h_n, c_n, gates (T,B,4H), cs (T,B,H))``
* ``gru_recurrence(x_proj (T,B,3H), w_hh (3H,H), b_hn (H,)?, h0, lengths?, reverse, backend,
  workspace=True) -> (y, h_n, gates (T,B,4H))``
* ``rnn_recurrence(x_proj (T,B,H), w_hh (H,H), h0, lengths?, reverse, nonlinearity, backend,
  workspace=True) -> (y, h_n)``
* ``<cell>_recurrence_backward(dy, d<state>_n..., w_hh, extras..., <state>0..., y, workspace...,
  lengths, reverse, attrs..., backend) -> (dx_proj, dw_hh, d<extra>..., d<state>0...)``

``backend`` is a resolved backend name (:mod:`fastrnn.backends`); the backend runs only the
time loops. What follows the backward loop is done here, once for every backend: the
gradient of W_hh is ONE GEMM over all T*B rows, ``dgh^T h_prev``, and the extras' gradients
(W_hr, b_hn) likewise; ``dx_proj`` goes on to ordinary autograd for W_ih, the biases and x.

``workspace=False`` (no backward will follow) lets a backend keep O(B*H) state instead of
the O(T*B*G) per-step workspace; the workspace results are then empty. The workspace is
kept in fp32 for fp16/bf16 inputs.

Routes (all in :func:`recurrence`, the one entry point of :mod:`fastrnn.functional`):

* a torch.func transform or forward-mode AD is active: the reference steps run as plain
  differentiable PyTorch (exact, at the reference's speed); the fused ops cannot see the
  wrapped tensors;
* anything traces or intercepts the call (torch.compile, FakeTensor, a dispatch or function
  mode, tensor subclasses, batched gradients): the registered op, through the dispatcher;
* plain eager mode: the same op bodies through an ordinary autograd.Function, skipping the
  dispatcher round trip and the custom-op autograd wrapper (measured on the 2-core CPU: ~30 us
  per forward call and several hundred us per LSTM backward at T=100, B=1, H=64), or, when no
  gradient is needed, the forward body without the workspace.
Backward under ``create_graph=True`` (double backward) recomputes the gradients by autograd
through the reference steps, exact and differentiable for every backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends, cells, reference
from .cells import Cell
from .numerics import acc_dtype

__all__ = ["recurrence", "Recurrence", "OPS", "lstm", "gru", "rnn"]


# ----------------------------------------------------------------------------------------
# Argument checks shared by every backend (the C++ entry points check again).
# ----------------------------------------------------------------------------------------
def _check(cell: Cell, named: dict) -> None:
    x_proj, lengths = named["x_proj"], named["lengths"]
    if x_proj.dim() != 3:
        raise RuntimeError(f"fastrnn: x_proj must be 3-D (T, B, G), got {x_proj.dim()}-D")
    T, B, G = x_proj.shape
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if not x_proj.is_floating_point():
        raise RuntimeError(f"fastrnn: x_proj must be a floating tensor, got {x_proj.dtype}")
    if G % cell.n_gates:
        raise RuntimeError(f"fastrnn: x_proj's last dim {G} is not a multiple of {cell.n_gates}")
    if lengths is not None:
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,):
            raise RuntimeError(
                f"fastrnn: lengths must be an int64 tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if lengths.device != x_proj.device:
            raise RuntimeError(f"fastrnn: lengths is on {lengths.device}, expected {x_proj.device}")
    shapes = cell.shapes(*cell.dims(x_proj, named["w_hh"], tuple(named[e] for e in cell.extras)))
    for name in cell.forward_args:
        t = named[name]
        if name not in shapes or t is None:
            continue
        if t.dtype != x_proj.dtype:
            raise RuntimeError(f"fastrnn: {name} has dtype {t.dtype}, expected {x_proj.dtype} like x_proj")
        if t.device != x_proj.device:
            raise RuntimeError(f"fastrnn: {name} is on {t.device}, expected {x_proj.device} like x_proj")
        if tuple(t.shape) != tuple(shapes[name]):
            raise RuntimeError(f"fastrnn: {name} must have shape {tuple(shapes[name])}, got {tuple(t.shape)}")
    for name, _, allowed in cell.attrs:
        if allowed is not None and named[name] not in allowed:
            choices = " or ".join(repr(a) for a in allowed)
            raise RuntimeError(f"fastrnn: Unknown {name} '{named[name]}'. Select from {choices}.")


# ----------------------------------------------------------------------------------------
# What every backend call shares: dtype widening, fresh outputs, the post-loop GEMMs.
# ----------------------------------------------------------------------------------------
def _fresh(out: tuple, inputs: tuple) -> tuple:
    """Custom ops may not return an input, a view of one, or two views of one buffer: copy
    any output whose storage was already seen (cheap insurance over every backend)."""
    ids = {id(t) for t in out}
    if len(ids) == len(out) and all(t._base is None for t in out) and not ids & {id(t) for t in inputs}:
        return out  # every output is a distinct base tensor that is not an input: nothing can alias

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


def _native(backend: str, args: tuple) -> tuple[tuple, torch.dtype | None]:
    """``args`` in a dtype ``backend`` runs, and the half dtype to return results in (or None).

    float16/bfloat16 on a backend with float32 kernels only (cpp): the operands are widened
    to float32, which is exact, the recurrence runs with float32 state and accumulation as
    every backend's half policy asks, and the results are rounded back to the input dtype."""
    low = args[0].dtype
    if backends.native_dtype(backend, low) == low:
        return args, None
    return tuple(a.float() if isinstance(a, Tensor) and a.dtype == low else a for a in args), low


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


# Backends whose entry points return only fresh buffers (csrc/: every output comes from
# fresh() or a new ATen result), and whose results here are new tensors or slices of those:
# nothing can alias an input, so _fresh's storage checks are skipped.
_FRESH_OUTPUTS = ("cpp",)


def _run_forward(cell: Cell, args: tuple, backend: str, workspace: bool, checked: bool = False) -> tuple:
    """``checked``: the caller built the arguments from a module's checked parameters and
    states (:func:`fastrnn.functional.rnn`), so the Python checks are skipped; the C++
    entry points check every argument again whatever the route."""
    named = dict(zip(cell.forward_args, args, strict=True))
    if not checked:
        _check(cell, named)
    native, low = _native(backend, args)
    out = tuple(backends.implementation(backend, f"{cell.name}_forward")(*native, workspace))
    n = 1 + len(cell.states)
    if low is not None:
        out = tuple(t.to(low) for t in out[:n]) + out[n:]
    if not workspace and any(w.numel() for w in out[n:]):  # the op's contract: empty workspaces
        acc = acc_dtype(named["x_proj"].dtype)
        out = out[:n] + tuple(named["x_proj"].new_empty(0, dtype=acc) for _ in cell.workspace)
    return out if backend in _FRESH_OUTPUTS else _fresh(out, args)


def _weight_grad(a: Tensor, b: Tensor) -> Tensor:
    """a^T b over all rows: a weight gradient as a torch matmul (the CPU backends')."""
    return a.t() @ b


def _run_backward(cell: Cell, args: tuple, backend: str) -> tuple:
    """The backend's backward loop, then the work every backend shares: h_prev, dW_hh as one
    GEMM over T*B rows, the extras' gradients; results in the upstream gradient's dtype."""
    dtype = args[0].dtype
    native, _ = _native(backend, args)
    named = dict(zip(cell.grad_args, native, strict=True))
    acc = acc_dtype(named["dy"].dtype)
    y, h0, lengths, reverse = _as(named["y"], acc), _as(named["h0"], acc), named["lengths"], named["reverse"]
    # h_prev is a (T, B, P) copy; without lengths-in-reverse, dW_hh needs none (see below)
    hp = None
    if "h_prev" in cell.backward_args or (reverse and lengths is not None):
        hp = named["h_prev"] = reference.h_prev(y, h0, lengths, reverse)
    loop = backends.implementation(backend, f"{cell.name}_backward")(*(named[a] for a in cell.backward_args))
    n = 1 + len(cell.states)
    dx, dstates0, loop_grads = loop[0], loop[1:n], loop[n:]
    dgh = cell.recurrent_grad(dx, loop_grads, named)
    T, B, G = dgh.shape
    P = h0.shape[-1]
    # the weight-gradient GEMMs: torch matmuls in the accumulation dtype, or the backend's
    # own (Triton), whose operand dtype and TF32 rule come from the layer's weights as its
    # recurrence's do; fp32 results either way for half inputs
    own, w_hh = backends.gemm(backend, "weight_grad"), named["w_hh"]
    wgrad = named["weight_grad"] = _weight_grad if own is None else (lambda a, b: own(a, b, w_hh))
    if hp is not None:
        dw_hh = wgrad(dgh.reshape(T * B, G), hp.reshape(T * B, P))
    else:
        # h_prev is h0 at the first step processed and y at the step before otherwise, so
        # dW_hh = dgh[first]^T h0 + dgh[rest]^T y[shifted]: one addmm over (T-1)*B rows, no copy
        first, rest, ys = (T - 1, slice(0, T - 1), y[1:]) if reverse else (0, slice(1, T), y[:-1])
        dg_rest, ys = dgh[rest].reshape((T - 1) * B, G), ys.reshape((T - 1) * B, P)
        if own is None:
            dw_hh = torch.addmm(dgh[first].t() @ h0, dg_rest.t(), ys)
        else:
            dw_hh = wgrad(dgh[first], h0) + wgrad(dg_rest, ys)
    d_extras = cell.extra_grads(dx, dgh, loop_grads, named)
    out = (dx, dw_hh, *d_extras, *dstates0)
    # custom ops return Tensors: an empty one stands for the gradient of an absent extra
    out = tuple(args[0].new_empty(0) if t is None else _as(t, dtype) for t in out)
    return out if backend in _FRESH_OUTPUTS else _fresh(out, args)


# ----------------------------------------------------------------------------------------
# One op per cell, from its spec
# ----------------------------------------------------------------------------------------
_PLAIN = (Tensor, torch.nn.Parameter)


def _eager(args) -> bool:
    """Whether a call may skip the dispatcher: nothing traces, intercepts or wraps it."""
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
    return all(
        type(a) in _PLAIN and not is_wrapped(a) and not is_batched(a) and not is_legacy(a)
        for a in args
        if isinstance(a, Tensor)
    )


def plain_eager(tensors) -> bool:
    """Whether a call on these tensors (None entries allowed) may skip the recurrence ops
    altogether for a one-call C++ path (a whole stack's inference, a cell step): plain
    tensors and nothing that traces, intercepts or transforms the call. Any active torch.func
    transform or forward-mode AD level answers no (the general route then decides per
    tensor); checking the levels first keeps this at a few attribute reads a call.
    ``is_compiling`` comes first: under torch.compile it is constant True, so dynamo never
    meets the interpreter-state queries below (each would break the graph)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.maybe_current_level() is not None or torch.autograd.forward_ad._current_level >= 0:
        return False
    if torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled():
        return False
    # legacy batched tensors (is_grads_batched backwards, vectorized jacobians) are plain
    # Tensors to type() and set no functorch level
    is_legacy = torch._C._functorch.is_legacy_batchedtensor
    return all(type(t) in _PLAIN and not is_legacy(t) for t in tensors if t is not None)


def _schema(names: tuple, cell: Cell, results: int, tail: str) -> str:
    types = {
        "lengths": "Tensor?",
        "reverse": "bool",
        **dict.fromkeys(cell.extras, "Tensor?"),
        **{a: t for a, t, _ in cell.attrs},
    }
    params = ", ".join(f"{types.get(n, 'Tensor')} {n}" for n in names)
    return f"({params}, str backend{tail}) -> ({', '.join(['Tensor'] * results)})"


class Recurrence:
    """The op pair of one cell and its eager routes. ``Recurrence(cell)(*args)`` takes the
    forward op's arguments (without ``workspace``) and returns all of its results."""

    def __init__(self, cell: Cell):
        self.cell = cell
        n_fwd = len(cell.forward_args)
        self.n_diff = n_diff = 1 + len(cell.states)  # y and the final states carry gradients
        self.saved_names = ("x_proj", "w_hh", *cell.extras, *(f"{s}0" for s in cell.states), "lengths")
        qual = f"fastrnn::{cell.name}_recurrence"

        def workspace_arg(args, kwargs):
            return kwargs.get("workspace", args[n_fwd + 1] if len(args) > n_fwd + 1 else True)

        def forward_body(*args, **kwargs):
            return _run_forward(cell, args[:n_fwd], args[n_fwd], workspace_arg(args, kwargs))

        def checked_body(*args, **kwargs):
            return _run_forward(cell, args[:n_fwd], args[n_fwd], workspace_arg(args, kwargs), checked=True)

        def backward_body(*args):
            return _run_backward(cell, args[:-1], args[-1])

        fwd = torch.library.custom_op(
            qual,
            forward_body,
            mutates_args=(),
            schema=_schema(cell.forward_args, cell, len(cell.forward_results), ", bool workspace=True"),
        )
        bwd = torch.library.custom_op(
            qual + "_backward",
            backward_body,
            mutates_args=(),
            schema=_schema(cell.grad_args, cell, len(cell.grad_results), ""),
        )

        @fwd.register_fake
        def _(*args, **kwargs):
            named = dict(zip(cell.forward_args, args, strict=False))
            x = named["x_proj"]
            shapes = cell.shapes(*cell.dims(x, named["w_hh"], tuple(named[e] for e in cell.extras)))
            keep = workspace_arg(args, kwargs)
            acc = acc_dtype(x.dtype)
            return (
                *(x.new_empty(shapes[r]) for r in cell.forward_results[:n_diff]),
                *(x.new_empty(shapes[r] if keep else (0,), dtype=acc) for r in cell.workspace),
            )

        @bwd.register_fake
        def _(*args):
            named = dict(zip(cell.grad_args, args, strict=False))
            dy, w_hh = named["dy"], named["w_hh"]
            return (
                dy.new_empty(*dy.shape[:2], w_hh.shape[0]),
                dy.new_empty(w_hh.shape),
                *(dy.new_empty(0 if named[e] is None else named[e].shape) for e in cell.extras),
                *(dy.new_empty(named[f"{s}0"].shape) for s in cell.states),
            )

        def setup_context(ctx, inputs, output, recipe=None):
            named = dict(zip(cell.forward_args, inputs, strict=False))
            saved = [named[a] for a in self.saved_names]
            tail = []
            ctx.recipe = None
            if recipe is not None and recipe[0] is not None:
                # x_proj is kept only for a differentiable backward (create_graph), which can
                # recompute it from the projection's operands: those are saved for the
                # projection's own backward anyway, so x_proj's (T, B, G) buffer is freed
                saved[0] = None
                ctx.recipe = recipe[3:]
                tail = recipe[:3]
            ctx.save_for_backward(*saved, output[0], *output[n_diff:], *tail)
            ctx.attrs = tuple(named[a] for a, *_ in cell.attrs)
            ctx.reverse, ctx.backend = named["reverse"], inputs[n_fwd]
            ctx.kept_workspace = workspace_arg(inputs, {})

        def backward(ctx, *grads):
            return (*self._backward(ctx, grads), None)  # the op's last argument: workspace

        fwd.register_autograd(backward, setup_context=setup_context)
        self.op = getattr(torch.ops.fastrnn, f"{cell.name}_recurrence")
        self.backward_op = getattr(torch.ops.fastrnn, f"{cell.name}_recurrence_backward")
        self.forward_body, self.backward_body = forward_body, backward_body
        self.function = self._function(setup_context, forward_body)
        self.checked_body = checked_body
        self.checked_function = self._function(setup_context, checked_body, recipe=True)

    def _backward(self, ctx, grads) -> tuple:
        """Gradients of the forward op's arguments up to ``backend``."""
        cell, n_diff = self.cell, self.n_diff
        saved = ctx.saved_tensors
        k = len(self.saved_names)
        named = dict(zip(self.saved_names, saved[:k], strict=True))
        recipe = getattr(ctx, "recipe", None)
        if recipe is not None:
            saved, (x2d, w_in, b_in) = saved[:-3], saved[-3:]
        y, workspace = saved[k], saved[k + 1 :]
        extras = tuple(named[e] for e in cell.extras)
        states0 = tuple(named[f"{s}0"] for s in cell.states)
        lengths = named["lengths"]
        tail = (None, None, *(None for _ in cell.attrs), None)  # lengths, reverse, attrs, backend
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            # the projection again, in differentiable torch ops (fastrnn::linear's backward has
            # no derivative of its own); on CUDA with TF32 its rounding may differ from the
            # forward's own GEMM, within the TF32 bound
            if recipe is not None:
                start, end = recipe
                proj = x2d @ w_in.t() if b_in is None else torch.addmm(b_in, x2d, w_in.t())
                named["x_proj"] = proj.view(*y.shape[:2], -1)[..., start:end]
            ne = len(extras)
            grads = _differentiable_grads(
                lambda x, w, *rest: reference.recurrence(
                    cell, x, w, rest[:ne], rest[ne:], lengths, ctx.reverse, ctx.attrs
                ),
                (named["x_proj"], named["w_hh"], *extras, *states0),
                grads[:n_diff],
            )
            return (*grads, *tail)
        if not ctx.kept_workspace:
            raise RuntimeError(
                f"fastrnn: {cell.name}_recurrence ran with workspace=False: it kept nothing to "
                "differentiate; run it with workspace=True when a backward follows"
            )
        args = (
            *grads[:n_diff],
            named["w_hh"],
            *extras,
            *states0,
            y,
            *workspace,
            lengths,
            ctx.reverse,
            *ctx.attrs,
            ctx.backend,
        )
        # the saved tensors were plain when the forward ran; only the upstream gradients can
        # come wrapped or batched (is_grads_batched, gradcheck)
        plain = plain_eager(grads[:n_diff]) or _eager(grads[:n_diff])
        out = self.backward_body(*args) if plain else self.backward_op(*args)
        d_extras = tuple(None if e is None else g for e, g in zip(extras, out[2 : 2 + len(extras)], strict=True))
        return (out[0], out[1], *d_extras, *out[2 + len(extras) :], *tail)

    def _function(self, setup_context, body, recipe: bool = False):
        """The eager autograd.Function of the forward op, running ``body``. With ``recipe``
        it takes five more arguments after ``backend``: x2d, w_in, b_in, start, end, the
        projection x_proj came from (x_proj = (x2d @ w_in^T + b_in)[..., start:end]), or
        five Nones."""
        n_diff, owner = self.n_diff, self
        n_op = len(self.cell.forward_args) + 1  # up to backend
        extra = (None,) * 5 if recipe else ()

        # forward(ctx, ...) rather than a separate setup_context staticmethod: with the latter,
        # Function.apply binds the arguments through inspect.signature on every call (~70 us).
        def forward(ctx, *args):
            out = body(*args[:n_op])
            setup_context(ctx, args[:n_op], out, args[n_op:] if recipe else None)
            # Autograd would otherwise fill a zero gradient for every output the loss does not
            # use, the (T, B, 4H) workspace included: ~0.5 ms of memset per LSTM backward at
            # T=100, B=8, H=128 here. Only the state outputs get zeros, made below on demand.
            ctx.set_materialize_grads(False)
            ctx.mark_non_differentiable(*out[n_diff:])
            ctx.grad_like = [(o.shape, o.dtype, o.device) for o in out[:n_diff]]
            return out

        def backward(ctx, *grads):
            grads = [
                g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                for g, (shape, dtype, device) in zip(grads, ctx.grad_like, strict=False)
            ]
            return (*owner._backward(ctx, grads), *extra)

        return type(
            f"{self.cell.title}Recurrence",
            (torch.autograd.Function,),
            {"forward": staticmethod(forward), "backward": staticmethod(backward)},
        )

    def __call__(self, *args):
        """The forward op's results for its arguments up to ``backend`` (the workspace is kept
        exactly when a gradient will be needed), by the cheapest route that serves the call."""
        needs_grad = torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
        if not _eager(args):
            return self.op(*args, workspace=needs_grad)
        if needs_grad:
            return self.function.apply(*args)
        return self.forward_body(*args, workspace=False)

    def checked_call(self, *args, recipe: tuple = (None,) * 5):
        """``__call__`` for arguments built from a module's checked parameters and states, on
        tensors :func:`plain_eager` accepted: the same routes without re-checking either.
        ``recipe``: (x2d, w_in, b_in, start, end) when x_proj is a slice of that projection."""
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return self.checked_function.apply(*args, *recipe)
        return self.checked_body(*args, workspace=False)


def _differentiable_grads(recurrence, inputs: tuple, grad_outputs: tuple) -> list:
    """Gradients of ``recurrence(*inputs)`` that autograd can differentiate again.

    Used when a backward runs with create_graph=True (gradient penalties, MAML,
    Hessian-vector products): the forward is recomputed through the reference steps with
    autograd recording, and differentiated with create_graph=True.
    """
    with torch.enable_grad():
        outs = recurrence(*inputs)
        wrt = [t for t in inputs if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(outs, wrt, grad_outputs, create_graph=True, allow_unused=True))
    return [next(found) if t is not None and t.requires_grad else None for t in inputs]


OPS: dict[str, Recurrence] = {name: Recurrence(cell) for name, cell in cells.CELLS.items()}
lstm, gru, rnn = OPS["lstm"], OPS["gru"], OPS["rnn"]


# ----------------------------------------------------------------------------------------
# The one entry point of the functional stack
# ----------------------------------------------------------------------------------------
def needs_composite(*tensors: Tensor | None) -> bool:
    """Whether a transform the fused ops cannot serve is applied to these tensors.

    Forward-mode AD (``torch.autograd.forward_ad`` dual tensors) and the torch.func
    transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap) reach a custom op with
    wrapped tensors that its autograd formula cannot see: the op would return zero
    tangents or raise. Those calls run the reference steps as plain differentiable PyTorch
    instead, which every transform supports exactly (at the reference's speed).
    """
    dual = torch.autograd.forward_ad._current_level >= 0
    if not dual and torch._C._functorch.maybe_current_level() is None:
        return False  # no transform is active: the common eager case, decided in ~0.3 us
    if torch.compiler.is_compiling():
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    batched = torch._C._functorch.is_batchedtensor
    for t in tensors:
        if t is None:
            continue
        if wrapped(t) or batched(t):
            return True
        if dual and torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def recurrence(
    cell: Cell,
    x_proj: Tensor,
    w_hh: Tensor,
    extras: tuple,
    states: tuple,
    lengths: Tensor | None,
    reverse: bool,
    attrs: tuple,
    backend: str,
    checked: bool = False,
    recipe: tuple = (None,) * 5,
) -> tuple:
    """One layer and direction of ``cell``: returns (y (T, B, P), *final states).

    ``checked``: the arguments come from a module's checked parameters and states and
    :func:`plain_eager` accepted them (:func:`fastrnn.functional.rnn` says so); then
    ``recipe`` may say which projection x_proj is a slice of (see :meth:`Recurrence.checked_call`)."""
    if checked and backend != backends.ORACLE:
        op = OPS[cell.name]
        out = op.checked_call(x_proj, w_hh, *extras, *states, lengths, reverse, *attrs, backend, recipe=recipe)
        return out[: 1 + len(states)]
    if backend == backends.ORACLE or needs_composite(x_proj, w_hh, *extras, *states):
        return reference.recurrence(cell, x_proj, w_hh, extras, states, lengths, reverse, attrs)
    out = OPS[cell.name](x_proj, w_hh, *extras, *states, lengths, reverse, *attrs, backend)
    return out[: 1 + len(states)]
