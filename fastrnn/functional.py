"""Layers x directions, input projection, packing and inter-layer dropout.

Every function here takes time-major input ``(T, B, I)``; :mod:`fastrnn.modules` does the
input checks and layout normalisation (batch_first, unbatched, PackedSequence) once.

Per layer, ONE GEMM projects the whole sequence for both directions,
``x_proj = x @ [W_ih_fwd; W_ih_bwd]^T + bias`` with T*B rows (torch's addmm, or the backend's
own GEMM: :mod:`fastrnn._projection`), then one recurrence op runs per direction. The
reverse direction honours each sequence's own length through ``lengths``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, cells, ops
from ._projection import project

__all__ = ["rnn", "cell", "cell_step", "unpack", "pack"]


@cache
def _param_names(name: str, bias: bool, proj: bool) -> tuple[str, ...]:
    return tuple(p.name for p in cells.CELLS[name].layer_params(bias, proj))


def _layer_weights(cell: cells.Cell, weights: Sequence[Tensor], bias: bool, proj: bool, index: int) -> dict:
    """The parameters of layer-direction ``index`` in torch.nn's flat weight list, by name."""
    names = _param_names(cell.name, bias, proj)
    return dict(zip(names, weights[index * len(names) : (index + 1) * len(names)], strict=True))


def _autocast_dtypes(
    mode: str,
    device_type: str,
    *,
    cell: bool,
    packed: bool,
    proj: bool,
    states: Sequence[Tensor],
    weights: Sequence[Tensor],
):
    """Under autocast (the caller checked it is on): (the dtype to compute in, the dtypes of
    h and c that torch.nn returns), or None when autocast leaves the call alone.

    torch.nn's answer follows from how its kernels meet autocast. On CUDA the cuDNN layers
    and every cell op are on autocast's lower-precision list: everything runs in the
    autocast dtype. On CPU only oneDNN's LSTM layer (unpacked, no projection) is on that
    list; elsewhere the gate products (linear/matmul) run in the low dtype and the state
    update promotes with the state's dtype: an RNN's h = act(low + low) is low, a GRU's
    h = (1-z)*n + z*h and an LSTM's c = f*c + i*g keep the state's dtype, an LSTM's
    h = o*tanh(c) takes c's, or is low after a projection. float64 is never cast.
    """
    if any(t.dtype == torch.float64 for t in (*states, *weights) if t is not None):
        return None
    return autocast_rule(
        mode,
        device_type,
        torch.get_autocast_dtype(device_type),
        cell=cell,
        packed=packed,
        proj=proj,
        state_dtype=states[-1].dtype,
    )


def autocast_rule(
    mode: str, device_type: str, low: torch.dtype, *, cell: bool, packed: bool, proj: bool, state_dtype: torch.dtype
):
    """See :func:`_autocast_dtypes`; ``state_dtype`` is c0's (LSTM) or h0's dtype."""
    if device_type != "cpu" or (mode == "LSTM" and not cell and not packed and not proj):
        return low, low, low
    if mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        # the variants: no torch.nn twin whose dtypes to follow; they run as an unpacked
        # nn.LSTM layer does under autocast, in the autocast dtype (LayerNormLSTM then
        # computes in float32 inside and rounds its results, as for half modules)
        return low, low, low
    state = torch.promote_types(low, state_dtype)
    if mode.startswith("RNN"):
        return low, low, None
    if mode == "GRU":
        return state, state, None
    return (low if proj else state), (low if proj else state), state


_HALF = (torch.float16, torch.bfloat16)
# what the C++ backend's one-call inference stack (csrc/stack.cpp) runs
_STACK_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
_STACK_DTYPES = (torch.float32, torch.float64)


def _autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for the input's device; False on a device autocast does not
    know (meta, used for deferred initialisation and shape inference), where asking raises."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _autocast_off(device_type: str):
    """torch.autocast(device_type, enabled=False), or nothing on a device without autocast."""
    return torch.autocast(device_type, enabled=False) if _autocast_enabled(device_type) else contextlib.nullcontext()


def _dtype_plan(spec, mode, input, states, weights, *, cell: bool, packed: bool, proj: bool):
    """(dtype to compute in, dtypes of h and c to return) when a call runs in another dtype
    than it returns, else None. Under autocast: torch.nn's rule (:func:`_autocast_dtypes`).
    A cell with ``project_input`` (LayerNorm) in float16/bfloat16: float32 inside, results
    rounded once. LayerNorm divides by the spread of what it normalises, which magnifies
    the half rounding of the projections (and of the activations between layers) feeding
    it (measured, bf16 LayerNormLSTM against the float32 equations: 0.7e-2..9e-2 relative
    error rounding inside, 2e-3..4e-3 for one layer in float32 inside, at the rounding floor
    of the results themselves)."""
    if _autocast_enabled(input.device.type):
        plan = _autocast_dtypes(
            mode, input.device.type, cell=cell, packed=packed, proj=proj, states=states, weights=weights
        )
        if plan is not None:
            return plan
    if spec.project_input is not None and input.dtype in _HALF:
        return torch.float32, input.dtype, input.dtype
    return None


def _autocast_cast(t, dtype):
    return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != dtype else t


def rnn(
    mode: str,
    input: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: Sequence[Tensor],
    *,
    bias: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    proj_size: int = 0,
    lengths: Tensor | None = None,
    backend: str = "auto",
    options: dict | None = None,
):
    """A stack of recurrent layers, torch.nn's semantics.

    Args:
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU", or a variant's
            ("PEEPHOLE_LSTM", "LAYERNORM_LSTM"; :mod:`fastrnn.variants`).
        input: (T, B, I), time-major.
        hx: (L*D, B, P) initial hidden state, or the pair (h0, c0) for LSTM, c0 (L*D, B, H).
        weights: torch.nn's flat weight list: per layer and direction
            w_ih, w_hh, [b_ih, b_hh], [w_hr] (a variant: its spec's parameters, in order).
        lengths: (B,) int64 on input's device, or None when every sequence has length T.
        options: the layer's other settings a cell reads (LayerNormLSTM: ``eps``).
    Returns:
        output (T, B, D*P), and h_n (L*D, B, P), or (h_n, c_n) for LSTM.
    """
    spec = cells.for_mode(mode)
    has_c = len(spec.states) > 1
    states = tuple(hx) if has_c else (hx,)
    plan = _dtype_plan(spec, mode, input, states, weights, cell=False, packed=lengths is not None, proj=proj_size > 0)
    if plan is not None:
        compute, h_dtype, c_dtype = plan
        state = tuple(_autocast_cast(s, compute) for s in states)
        with _autocast_off(input.device.type):
            out, hidden = rnn(
                mode,
                _autocast_cast(input, compute),
                state if has_c else state[0],
                [_autocast_cast(w, compute) for w in weights],
                bias=bias,
                num_layers=num_layers,
                dropout=dropout,
                training=training,
                bidirectional=bidirectional,
                proj_size=proj_size,
                lengths=lengths,
                backend=backend,
                options=options,
            )
        if has_c:
            return out.to(h_dtype), (hidden[0].to(h_dtype), hidden[1].to(c_dtype))
        return out.to(h_dtype), hidden.to(h_dtype)
    concrete = backends.resolve(backend, input.device)
    # plain eager tensors (nothing traces, intercepts or transforms the call): the ops may
    # skip their own re-checks, and the C++ backend may run an inference stack in one call
    checked = concrete == "cpp" and ops.plain_eager((input, *states, *weights))
    if checked and mode in _STACK_MODES and input.dtype in _STACK_DTYPES:
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (input, *states, *weights))
        if not grad:
            from . import _cpp  # the cpp backend loaded: its extension is there

            # no backward follows: the whole stack in one call (same operations, same bits)
            out, *final = _cpp._C.stack_forward(
                mode,
                input,
                list(states),
                list(weights),
                num_layers,
                bidirectional,
                bias,
                proj_size,
                dropout if training else 0.0,
                lengths,
            )
            return out, (tuple(final) if has_c else final[0])
    D = 2 if bidirectional else 1
    states0 = states
    T, B = input.shape[0], input.shape[1]
    finals: list[list[Tensor]] = [[] for _ in spec.states]
    layer_input = input
    for layer in range(num_layers):
        groups = [_layer_weights(spec, weights, bias, proj_size > 0, layer * D + d) for d in range(D)]
        loop = [spec.loop_inputs(mode, g, bias, options) for g in groups]  # (x_proj bias, extras, attrs)
        w_ih = torch.cat([g["weight_ih"] for g in groups]) if D > 1 else groups[0]["weight_ih"]
        x2d = layer_input.reshape(T * B, layer_input.shape[-1])
        b = None
        if loop[0][0] is not None:  # the bias folded into the projection (LayerNormLSTM has none)
            b = torch.cat([lp[0] for lp in loop]) if D > 1 else loop[0][0]
        x_proj = project(x2d, w_ih, b, concrete)
        G = w_ih.shape[0] // D
        x_proj = x_proj.view(T, B, D * G)
        # the directions' column blocks by split, not by slicing: a slice's backward
        # zero-fills a whole (T, B, D*G) gradient per direction and adds them, split's
        # concatenates once (the same values; 550 us per fill at (100, 8, 1024) here)
        parts = x_proj.split(G, dim=-1) if D > 1 else (x_proj,)
        outs = []
        for d in range(D):
            i = layer * D + d
            _, extras, attrs = loop[d]
            x_d = parts[d]
            recipe = (x2d, w_ih, b, d * G, (d + 1) * G) if checked else (None,) * 5
            if spec.project_input is not None:
                x_d = spec.project_input(x_d, groups[d], options)
                recipe = (None,) * 5
            y, *final = ops.recurrence(
                spec,
                x_d,
                groups[d]["weight_hh"],
                extras,
                tuple(s[i] for s in states0),
                lengths,
                d == 1,
                attrs,
                concrete,
                checked,
                recipe,
            )
            outs.append(y)
            for acc, f in zip(finals, final, strict=True):
                acc.append(f)
        # the projection's last reference here: gone before the next layer's is made
        # (the ops keep it only where a backward needs it)
        del x_proj, x_d, parts
        layer_input = torch.cat(outs, dim=-1) if D > 1 else outs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    if D == 1 and layer_input.requires_grad:
        # The op saved this tensor for its backward; handing it out would make an in-place
        # edit of the output (out.masked_fill_(...)) fail the backward's version check,
        # which torch.nn allows. One (T, B, H) copy, only when a backward will follow.
        layer_input = layer_input.clone()
    final_states = tuple(torch.stack(f) for f in finals)
    return layer_input, (final_states if len(final_states) > 1 else final_states[0])


def cell(
    mode: str,
    input: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    backend: str = "auto",
):
    """One step of a torch.nn cell on (B, I) input: the recurrence op with T = 1."""
    weights = {"weight_ih": w_ih, "weight_hh": w_hh}
    if b_ih is not None:
        weights.update(bias_ih=b_ih, bias_hh=b_hh)
    return cell_step(mode, input, hx, weights, bias=b_ih is not None, backend=backend)


def cell_step(
    mode: str,
    input: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: dict,
    *,
    bias: bool,
    backend: str = "auto",
    options: dict | None = None,
):
    """One step of any cell on (B, I) input, its parameters by spec name (``weight_ih``, ...)."""
    spec = cells.for_mode(mode)
    has_c = len(spec.states) > 1
    states = tuple(hx) if has_c else (hx,)
    plan = _dtype_plan(
        spec, mode, input, states, (weights["weight_ih"], weights["weight_hh"]), cell=True, packed=False, proj=False
    )
    if plan is not None:
        compute, h_dtype, c_dtype = plan
        cast_states = tuple(_autocast_cast(s, compute) for s in states)
        cast_weights = {k: _autocast_cast(w, compute) for k, w in weights.items()}
        with _autocast_off(input.device.type):
            out = cell_step(
                mode,
                _autocast_cast(input, compute),
                cast_states if has_c else cast_states[0],
                cast_weights,
                bias=bias,
                backend=backend,
                options=options,
            )
        return (out[0].to(h_dtype), out[1].to(c_dtype)) if has_c else out.to(h_dtype)
    concrete = backends.resolve(backend, input.device)
    if concrete == "cpp":
        from . import _cell_step  # the cpp backend loaded: its extension is there

        w = (weights["weight_ih"], weights["weight_hh"], weights.get("bias_ih"), weights.get("bias_hh"))
        if _cell_step.serves(mode, input, states, w):
            return _cell_step.step(mode, input, states, *w)
    b, extras, attrs = spec.loop_inputs(mode, weights, bias, options)
    w_ih = weights["weight_ih"]
    x_proj = project(input, w_ih, b, concrete).unsqueeze(0)
    if spec.project_input is not None:
        x_proj = spec.project_input(x_proj, weights, options)
    _, *final = ops.recurrence(spec, x_proj, weights["weight_hh"], extras, states, None, False, attrs, concrete)
    return tuple(final) if len(final) > 1 else final[0]


# aten::_pad_packed_sequence reads batch_sizes' values and has no fake implementation, so
# fake-tensor tracing of it fails ("data is not allocated yet", pytorch/pytorch#162374).
# torch 2.13's Dynamo skips pad_packed_sequence (a graph break, then eager); torch 2.11's
# traces into it and a compiled packed forward dies. Disabling it here gives every torch the
# same graph break; the forward has one anyway at int(batch_sizes[0]).
@torch.compiler.disable
def _pad_packed(plain: PackedSequence) -> tuple[Tensor, Tensor]:
    return pad_packed_sequence(plain, batch_first=False)


def unpack(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """PackedSequence -> (padded (T, B, I) in the packed (length-sorted) order, lengths (B,))."""
    plain = PackedSequence(packed.data, packed.batch_sizes, None, None)
    padded, lengths = _pad_packed(plain)
    return padded, lengths.to(device=padded.device, dtype=torch.int64)


def pack(output: Tensor, lengths: Tensor, batch_sizes: Tensor | None = None) -> Tensor:
    """Padded time-major output (sorted order) -> the data tensor of a PackedSequence.
    Lengths on the meta device hold no values: they are read from ``batch_sizes`` then."""
    if lengths.device.type == "meta" and batch_sizes is not None:
        lengths = (batch_sizes[None, :] > torch.arange(lengths.shape[0])[:, None]).sum(1)
    return pack_padded_sequence(output, lengths.cpu(), enforce_sorted=True).data
