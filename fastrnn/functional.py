"""Layers x directions, input projection, packing and inter-layer dropout.

Every function here takes time-major input ``(T, B, I)``; :mod:`fastrnn.modules` does the
input checks and layout normalisation (batch_first, unbatched, PackedSequence) once.

Per layer, ONE GEMM projects the whole sequence for both directions,
``x_proj = x @ [W_ih_fwd; W_ih_bwd]^T + bias`` with T*B rows, then one recurrence op runs per
direction. The reverse direction honours each sequence's own length through ``lengths``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, ops, reference

__all__ = ["rnn", "cell", "unpack", "pack", "gate_multiplier"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def gate_multiplier(mode: str) -> int:
    return _GATES[mode]


def _recurrent_bias(mode: str, b_ih: Optional[Tensor], b_hh: Optional[Tensor]):
    """(bias folded into x_proj, b_hn kept inside the GRU's reset product)."""
    if b_ih is None:
        return None, None
    if mode != "GRU":
        return b_ih + b_hh, None
    H = b_hh.shape[0] // 3
    return b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)]), b_hh[2 * H:]


def _needs_composite(*tensors: Optional[Tensor]) -> bool:
    """Whether a transform the fused ops cannot serve is applied to these tensors.

    Forward-mode AD (``torch.autograd.forward_ad`` dual tensors) and the torch.func
    transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap) reach a custom op with
    wrapped tensors that its autograd formula cannot see: the op would return zero
    tangents or raise. Those calls run the reference cells as plain differentiable PyTorch
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


def _recurrence(mode: str, x_proj, w_hh, b_hn, w_hr, h0, c0, lengths, reverse: bool, backend: str):
    """One direction of one layer: returns (y, h_n, c_n or None)."""
    if backend == backends.ORACLE or _needs_composite(x_proj, w_hh, b_hn, w_hr, h0, c0):
        return _oracle_recurrence(mode, x_proj, w_hh, b_hn, w_hr, h0, c0, lengths, reverse)
    if mode == "LSTM":
        y, h_n, c_n, _, _ = ops.lstm(x_proj, w_hh, w_hr, h0, c0, lengths, reverse, backend)
        return y, h_n, c_n
    if mode == "GRU":
        y, h_n, _ = ops.gru(x_proj, w_hh, b_hn, h0, lengths, reverse, backend)
        return y, h_n, None
    nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
    y, h_n = ops.rnn(x_proj, w_hh, h0, lengths, reverse, nonlinearity, backend)
    return y, h_n, None


def _oracle_recurrence(mode, x_proj, w_hh, b_hn, w_hr, h0, c0, lengths, reverse):
    if mode == "LSTM":
        return reference.lstm_recurrence(x_proj, w_hh, w_hr, h0, c0, lengths, reverse)
    if mode == "GRU":
        return (*reference.gru_recurrence(x_proj, w_hh, b_hn, h0, lengths, reverse), None)
    nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
    return (*reference.rnn_recurrence(x_proj, w_hh, h0, lengths, reverse, nonlinearity), None)


def _autocast_dtypes(mode: str, device_type: str, *, cell: bool, packed: bool, proj: bool,
                     states: Sequence[Tensor], weights: Sequence[Tensor]):
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
    return autocast_rule(mode, device_type, torch.get_autocast_dtype(device_type), cell=cell,
                         packed=packed, proj=proj, state_dtype=states[-1].dtype)


def autocast_rule(mode: str, device_type: str, low: torch.dtype, *, cell: bool, packed: bool, proj: bool,
                  state_dtype: torch.dtype):
    """See :func:`_autocast_dtypes`; ``state_dtype`` is c0's (LSTM) or h0's dtype."""
    if device_type != "cpu" or (mode == "LSTM" and not cell and not packed and not proj):
        return low, low, low
    state = torch.promote_types(low, state_dtype)
    if mode.startswith("RNN"):
        return low, low, None
    if mode == "GRU":
        return state, state, None
    return (low if proj else state), (low if proj else state), state


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
    lengths: Optional[Tensor] = None,
    backend: str = "auto",
):
    """A stack of recurrent layers, torch.nn's semantics.

    Args:
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU".
        input: (T, B, I), time-major.
        hx: (L*D, B, P) initial hidden state, or the pair (h0, c0) for LSTM, c0 (L*D, B, H).
        weights: torch.nn's flat weight list: per layer and direction
            w_ih, w_hh, [b_ih, b_hh], [w_hr].
        lengths: (B,) int64 on input's device, or None when every sequence has length T.
    Returns:
        output (T, B, D*P), and h_n (L*D, B, P), or (h_n, c_n) for LSTM.
    """
    if torch.is_autocast_enabled(input.device.type):
        states = tuple(hx) if mode == "LSTM" else (hx,)
        plan = _autocast_dtypes(mode, input.device.type, cell=False, packed=lengths is not None,
                                proj=proj_size > 0, states=states, weights=weights)
        if plan is not None:
            compute, h_dtype, c_dtype = plan
            state = tuple(_autocast_cast(s, compute) for s in states)
            with torch.autocast(input.device.type, enabled=False):
                out, hidden = rnn(mode, _autocast_cast(input, compute), state if mode == "LSTM" else state[0],
                                  [_autocast_cast(w, compute) for w in weights], bias=bias,
                                  num_layers=num_layers, dropout=dropout, training=training,
                                  bidirectional=bidirectional, proj_size=proj_size, lengths=lengths,
                                  backend=backend)
            if mode == "LSTM":
                return out.to(h_dtype), (hidden[0].to(h_dtype), hidden[1].to(c_dtype))
            return out.to(h_dtype), hidden.to(h_dtype)
    concrete = backends.resolve(backend, input.device)
    D = 2 if bidirectional else 1
    per = 2 + 2 * bias + (proj_size > 0)
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    T, B = input.shape[0], input.shape[1]
    h_n, c_n = [], []
    layer_input = input
    for layer in range(num_layers):
        groups = [weights[(layer * D + d) * per:(layer * D + d + 1) * per] for d in range(D)]
        folded = [_recurrent_bias(mode, *(g[2:4] if bias else (None, None))) for g in groups]
        w_ih = torch.cat([g[0] for g in groups]) if D > 1 else groups[0][0]
        x2d = layer_input.reshape(T * B, layer_input.shape[-1])
        if bias:
            b = torch.cat([f[0] for f in folded]) if D > 1 else folded[0][0]
            x_proj = torch.addmm(b, x2d, w_ih.t())
        else:
            x_proj = x2d @ w_ih.t()
        G = w_ih.shape[0] // D
        x_proj = x_proj.view(T, B, D * G)
        outs = []
        for d in range(D):
            i = layer * D + d
            w_hr = groups[d][-1] if proj_size > 0 else None
            y, hn, cn = _recurrence(
                mode, x_proj[..., d * G:(d + 1) * G] if D > 1 else x_proj, groups[d][1],
                folded[d][1], w_hr, h0[i], None if c0 is None else c0[i], lengths, d == 1, concrete)
            outs.append(y)
            h_n.append(hn)
            c_n.append(cn)
        layer_input = torch.cat(outs, dim=-1) if D > 1 else outs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    if D == 1 and layer_input.requires_grad:
        # The op saved this tensor for its backward; handing it out would make an in-place
        # edit of the output (out.masked_fill_(...)) fail the backward's version check,
        # which torch.nn allows. One (T, B, H) copy, only when a backward will follow.
        layer_input = layer_input.clone()
    h_n = torch.stack(h_n)
    if mode == "LSTM":
        return layer_input, (h_n, torch.stack(c_n))
    return layer_input, h_n


def cell(
    mode: str,
    input: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    backend: str = "auto",
):
    """One step of a cell on (B, I) input: the recurrence op with T = 1."""
    states = tuple(hx) if mode == "LSTM" else (hx,)
    plan = None
    if torch.is_autocast_enabled(input.device.type):
        plan = _autocast_dtypes(mode, input.device.type, cell=True, packed=False, proj=False,
                                states=states, weights=(w_ih, w_hh))
    if plan is not None:
        compute, h_dtype, c_dtype = plan
        cast = [_autocast_cast(t, compute) for t in (input, *states, w_ih, w_hh, b_ih, b_hh)]
        with torch.autocast(input.device.type, enabled=False):
            if mode == "LSTM":
                h1, c1 = cell(mode, cast[0], (cast[1], cast[2]), *cast[3:], backend=backend)
                return h1.to(h_dtype), c1.to(c_dtype)
            return cell(mode, cast[0], cast[1], *cast[2:], backend=backend).to(h_dtype)
    concrete = backends.resolve(backend, input.device)
    b, b_hn = _recurrent_bias(mode, b_ih, b_hh)
    x_proj = (torch.addmm(b, input, w_ih.t()) if b is not None else input @ w_ih.t()).unsqueeze(0)
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    _, h1, c1 = _recurrence(mode, x_proj, w_hh, b_hn, None, h0, c0, None, False, concrete)
    return (h1, c1) if mode == "LSTM" else h1


def unpack(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """PackedSequence -> (padded (T, B, I) in the packed (length-sorted) order, lengths (B,))."""
    plain = PackedSequence(packed.data, packed.batch_sizes, None, None)
    padded, lengths = pad_packed_sequence(plain, batch_first=False)
    return padded, lengths.to(device=padded.device, dtype=torch.int64)


def pack(output: Tensor, lengths: Tensor) -> Tensor:
    """Padded time-major output (sorted order) -> the data tensor of a PackedSequence."""
    return pack_padded_sequence(output, lengths.cpu(), enforce_sorted=True).data
