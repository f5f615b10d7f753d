"""The time loops in plain PyTorch: the ``"reference"`` backend and the oracle.

Every cell's step is written once, in :mod:`fastrnn.cells`; the loops here run any cell:

* :func:`recurrence`: forward only, differentiable by autograd, any floating dtype (float64
  included). The oracle every backend is measured against, and the route for what the
  fused ops cannot serve (torch.func transforms, forward AD, double backward).
* ``<cell>_forward`` / ``<cell>_backward``: the reference backend, with the same contract as
  the C++ and Triton backends (see :mod:`fastrnn.backends`): the forward also returns the
  workspace, and the backward runs the hand-derived reverse-time steps, exactly the
  algorithm the kernels implement. Comparing it with autograd through the steps checks
  the derivation.

Packed semantics: ``lengths`` (B,) int64 or None; step t of sequence b is active iff
``t < lengths[b]``. An inactive step keeps the state and writes a zero output. The same rule
serves the reverse direction, which then starts from h0 at each sequence's own last step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cells import CELLS, Cell
from .numerics import acc_dtype

__all__ = ["recurrence", "forward_loop", "backward_loop", "h_prev"]


def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(t: int, lengths: Tensor | None) -> Tensor | None:
    """(B, 1) bool mask of the sequences for which step t is real, or None (all are)."""
    return None if lengths is None else (t < lengths).unsqueeze(1)


def _keep(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    return new if mask is None else torch.where(mask, new, old)


def _zero_inactive(mask: Tensor | None, x: Tensor) -> Tensor:
    # where, not a multiply: a padded step may hold inf/nan that 0 * x would propagate
    return x if mask is None else torch.where(mask, x, 0.0)


def forward_loop(cell: Cell, x_proj, w_hh, extras, states, lengths, reverse: bool, attrs):
    """Run ``cell.step`` over time. Returns (y (T, B, .), final states, workspace tuple).

    Inactive steps keep every state and output zeros; their workspace rows are still
    recorded (the backward never reads them: their gradients are zero)."""
    T = x_proj.shape[0]
    ys: list = [None] * T
    ws: list = [None] * T
    for t in _steps(T, reverse):
        m = _active(t, lengths)
        out, new_states, step_ws = cell.step(x_proj[t], states, w_hh, extras, attrs)
        states = tuple(_keep(m, n, s) for n, s in zip(new_states, states, strict=True))
        ys[t] = _zero_inactive(m, out)
        ws[t] = (*step_ws, *(states[i] for i in cell.saved_states))
    workspace = tuple(torch.stack([w[k] for w in ws]) for k in range(len(cell.workspace)))
    return torch.stack(ys), states, workspace


def _to_acc(*tensors: Tensor | None) -> list:
    return [t.to(acc_dtype(t.dtype)) if isinstance(t, Tensor) and t.is_floating_point() else t for t in tensors]


def recurrence(cell: Cell, x_proj, w_hh, extras, states, lengths=None, reverse=False, attrs=()):
    """One layer and direction, differentiable by autograd: returns (y, *final states).
    fp16/bf16 inputs run in fp32 and the results are cast back, as the kernels do."""
    dtype = x_proj.dtype
    x_proj, w_hh, *rest = _to_acc(x_proj, w_hh, *extras, *states)
    y, final, _ = forward_loop(
        cell, x_proj, w_hh, tuple(rest[: len(extras)]), tuple(rest[len(extras) :]), lengths, reverse, attrs
    )
    return (y.to(dtype), *(s.to(dtype) for s in final))


def h_prev(y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """(T, B, P): the state each step started from, for the active steps.

    Forward direction: y[t-1] (always active when t is) or h0 at t=0. Reverse: y[t+1] when
    step t+1 was active for that sequence, else h0 (the sequence starts at its own end).
    Entries of inactive steps are never used (their gradients are zero).
    """
    h0 = h0.unsqueeze(0)
    if not reverse:
        return torch.cat([h0, y[:-1]], dim=0)
    hp = torch.cat([y[1:], h0], dim=0)
    if lengths is None:
        return hp
    T = y.shape[0]
    t_next = torch.arange(1, T + 1, device=y.device).unsqueeze(1)  # (T, 1)
    started = (t_next < lengths.unsqueeze(0)).unsqueeze(2)  # (T, B, 1)
    return torch.where(started, hp, h0)


class _Saved:
    """What a reverse step reads of the tensors the backward got, at its step t: ``s.gates``
    is ``gates[t]``; ``s.prev("cs", "c0")`` is ``cs`` at the step before t in processing
    order, or ``c0`` at the first step."""

    def __init__(self, named: dict, t: int, p: int):
        self._named, self._t, self._p = named, t, p

    def __getattr__(self, name: str) -> Tensor:
        return self._named[name][self._t]

    def prev(self, seq: str, initial: str) -> Tensor:
        x = self._named[seq]
        return x[self._p] if 0 <= self._p < x.shape[0] else self._named[initial]


def backward_loop(cell: Cell, named: dict):
    """The reverse-time loop over ``cell.step_backward``, given the backward arguments by name.

    Per active step, with dh the gradient reaching h_t (carried from later steps plus dy[t]),
    the step returns dx_proj_t, the gradient dgh_t of the recurrent product h_{t-1} @ W_hh^T,
    a direct term of dh_{t-1} (or None), the gradients of the other states and its loop
    results (LSTM: dh_out_t); then dh_{t-1} = direct + dgh_t @ W_hh. Inactive steps pass
    every gradient through and write zero rows.
    Returns (dx_proj (T, B, G), dh0, *other state gradients, *loop results).
    """
    dy, lengths, reverse = named["dy"], named["lengths"], named["reverse"]
    w_hh = named["w_hh"]
    extras = tuple(named.get(e) for e in cell.extras)
    attrs = tuple(named.get(a) for a, *_ in cell.attrs)
    dh = named["dh_n"]
    drest = tuple(named[f"d{s}_n"] for s in cell.states[1:])
    T = dy.shape[0]
    dx: list = [None] * T
    outs: list = [None] * T
    for t in _steps(T, not reverse):
        m = _active(t, lengths)
        p = t + 1 if reverse else t - 1
        dx_t, dgh_t, direct, new_rest, out_t = cell.step_backward(
            _Saved(named, t, p), dh + dy[t], drest, w_hh, extras, attrs
        )
        dx[t] = _zero_inactive(m, dx_t)
        carried = dgh_t @ w_hh if direct is None else direct + dgh_t @ w_hh
        dh = _keep(m, carried, dh)
        drest = tuple(_keep(m, n, o) for n, o in zip(new_rest, drest, strict=True))
        outs[t] = tuple(
            None if o is None else _zero_inactive(m, o).sum(0) if name.startswith("sum_") else _zero_inactive(m, o)
            for name, o in zip(cell.loop_grads, out_t, strict=True)
        )
    loop = tuple(
        dy.new_empty(0) if outs[0][k] is None else torch.stack([o[k] for o in outs])
        for k in range(len(cell.loop_grads))
    )
    return (torch.stack(dx), dh, *drest, *loop)


# ----------------------------------------------------------------------------------------
# The backend entry points: <cell>_forward / <cell>_backward with the contract of
# fastrnn.backends. fp16/bf16 inputs are computed in fp32; y and the final states are cast
# back, the workspace and every backward result stay in fp32 (the accumulation dtype).
# ----------------------------------------------------------------------------------------
def _forward_entry(cell: Cell):
    def forward(*args, workspace: bool = True):
        # the reference always keeps its workspace (the shared layer drops it when unused)
        named = dict(zip(cell.forward_args, args, strict=False))
        dtype = named["x_proj"].dtype
        acc = dict(zip(named, _to_acc(*named.values()), strict=True))
        extras = tuple(acc[e] for e in cell.extras)
        states = tuple(acc[f"{s}0"] for s in cell.states)
        attrs = tuple(acc[a] for a, *_ in cell.attrs)
        y, final, ws = forward_loop(
            cell, acc["x_proj"], acc["w_hh"], extras, states, acc["lengths"], acc["reverse"], attrs
        )
        return (y.to(dtype), *(s.to(dtype) for s in final), *ws)

    forward.__name__ = f"{cell.name}_forward"
    return forward


def _backward_entry(cell: Cell):
    def backward(*args):
        named = dict(zip(cell.backward_args, _to_acc(*args), strict=True))
        return backward_loop(cell, named)

    backward.__name__ = f"{cell.name}_backward"
    return backward


for _cell in CELLS.values():
    globals()[f"{_cell.name}_forward"] = _forward_entry(_cell)
    globals()[f"{_cell.name}_backward"] = _backward_entry(_cell)
del _cell
