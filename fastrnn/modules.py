"""Drop-in LSTM, GRU, RNN and their cells.

Each class subclasses its torch.nn twin, so the constructor, parameters (names, shapes,
order, initialisation), ``state_dict``, ``repr`` and ``isinstance`` checks are torch.nn's
own. The one addition is the keyword-only ``backend`` argument (``"auto"`` by default, see
:mod:`fastrnn.backends`). ``forward`` validates input exactly as torch.nn does (same
exception classes and messages; clearer ones where torch.nn's come from deep inside ATen
or where it silently accepts a wrong shape), normalises the layout once and calls
:mod:`fastrnn.functional`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends, cells, functional, interop

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]

_NAMES = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _layer_name(module) -> str:
    """The name torch.nn's messages use for the layer (a variant: its own class name)."""
    return _NAMES.get(module.mode, type(module).__name__)


def _check_state_like(input: Tensor, states: tuple[Tensor, ...]) -> None:
    for s in states:
        if s.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {s.device}"
            )
        if s.dtype != input.dtype:
            raise RuntimeError(
                f"hidden state dtype ({s.dtype}) does not match input dtype ({input.dtype}). "
                f"Convert the state: hx.to({input.dtype})"
            )


class _RecurrentLayer:
    """forward() shared by LSTM, GRU and RNN (mixed in before the torch.nn class)."""

    # -- interop (fastrnn/interop.py): TorchScript compiles the torch.nn twin; torch's
    # quantization passes warn that they leave fastrnn modules float
    __prepare_scriptable__ = interop.prepare_scriptable
    qconfig = interop.qconfig_property
    # -- end interop

    def _options(self) -> dict | None:
        """Settings of the layer a cell's loop reads besides its parameters (none for torch.nn's)."""
        return None

    def _zeros_state(self, input: Tensor, batch: int):
        """Zero initial states, one per state of the cell, shaped as the cell's spec says."""
        spec = cells.for_mode(self.mode)
        D = 2 if self.bidirectional else 1
        H = self.hidden_size
        P = self.proj_size if self.proj_size > 0 else H
        shapes = spec.shapes(1, batch, H, P)
        zeros = tuple(
            torch.zeros(self.num_layers * D, *shapes[f"{s}0"], dtype=input.dtype, device=input.device)
            for s in spec.states
        )
        return zeros if len(zeros) > 1 else zeros[0]

    def _check_hx_rank(self, hx, batched: bool) -> None:
        want = 3 if batched else 2
        what = "batched 3-D" if batched else "unbatched 2-D"
        if len(cells.for_mode(self.mode).states) > 1:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                is_seq = isinstance(hx, (tuple, list))
                msg = (
                    f"{_layer_name(self)} expects hx to be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}"
                    + (f" of length {len(hx)}" if is_seq else "")
                )
                # torch.nn's classes: indexing hx[1] of a tensor or a 1-tuple is an IndexError,
                # of a non-sequence a TypeError
                if isinstance(hx, Tensor) or (is_seq and len(hx) < 2):
                    raise IndexError(msg)
                if not is_seq:
                    raise TypeError(msg)
                raise RuntimeError(msg)
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {what} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
        elif hx.dim() != want:
            raise RuntimeError(f"For {what} input, hx should also be {want}-D but got {hx.dim()}-D tensor")

    def forward(self, input, hx=None):
        if interop.records_torch_nn():  # jit.trace and ONNX export record torch.nn's forward
            return interop.torch_forward(self, input, hx)
        self._update_flat_weights()
        is_lstm = len(cells.for_mode(self.mode).states) > 1  # the state is a tuple (h, c)
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batched = True
            if data.dtype != self._flat_weights[0].dtype:
                raise RuntimeError(
                    f"{_layer_name(self)}: packed input dtype ({data.dtype}) does not match weight dtype "
                    f"({self._flat_weights[0].dtype}). Convert input: input.to({self._flat_weights[0].dtype})"
                )
            if hx is None:
                hx = self._zeros_state(data, int(batch_sizes[0]))
            else:
                self._check_hx_rank(hx, True)
            # torch.nn skips this check for packed LSTM input and then broadcasts silently.
            self.check_forward_args(data, hx, batch_sizes)
            hx = self.permute_hidden(hx, sorted_indices)
            x, lengths = functional.unpack(PackedSequence(data, batch_sizes))
        else:
            if input.dim() not in (2, 3):
                kind = " tensor" if _layer_name(self) == "RNN" else ""
                raise ValueError(
                    f"{_layer_name(self)}: Expected input to be 2D or 3D, got {input.dim()}D{kind} instead"
                )
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                input = input.unsqueeze(batch_dim)
            if hx is None:
                hx = self._zeros_state(input, input.size(batch_dim))
            else:
                self._check_hx_rank(hx, batched)
                if not batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
            self.check_forward_args(input, hx, None)
            x = input.transpose(0, 1) if self.batch_first else input
            lengths = None
            unsorted_indices = None
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        _check_state_like(x, tuple(hx) if is_lstm else (hx,))

        output, hidden = functional.rnn(
            self.mode,
            x,
            hx,
            self._flat_weights,
            bias=self.bias,
            num_layers=self.num_layers,
            dropout=self.dropout,
            training=self.training,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
            lengths=lengths,
            backend=getattr(self, "backend", "auto"),
            options=self._options(),
        )

        if packed:
            data = functional.pack(output, lengths, batch_sizes)
            output = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
        return output, hidden


class LSTM(_RecurrentLayer, nn.LSTM):
    """Drop-in :class:`torch.nn.LSTM` (proj_size included) running on a fastrnn backend.

    Same arguments as torch.nn.LSTM, plus keyword-only ``backend``: "auto" (default),
    "triton", "cpp" or "reference".

    Example::

        >>> lstm = fastrnn.LSTM(16, 32, num_layers=2, batch_first=True)
        >>> out, (h_n, c_n) = lstm(torch.randn(4, 10, 16))
        >>> out.shape, h_n.shape
        (torch.Size([4, 10, 32]), torch.Size([2, 4, 32]))
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)


class GRU(_RecurrentLayer, nn.GRU):
    """Drop-in :class:`torch.nn.GRU` running on a fastrnn backend (keyword-only ``backend``)."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)


class RNN(_RecurrentLayer, nn.RNN):
    """Drop-in :class:`torch.nn.RNN` (tanh or relu) running on a fastrnn backend."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)


# The layer that runs each cell of fastrnn.cells (the parity command and the tests build from it)
LAYERS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


# ----------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------
class _Cell:
    """forward() shared by the cells. ``_mode`` is the functional mode of the subclass."""

    _mode: str
    _name: str  # torch.nn's class name, used in messages

    # -- interop (fastrnn/interop.py): TorchScript compiles the torch.nn twin; torch's
    # quantization passes warn that they leave fastrnn modules float
    __prepare_scriptable__ = interop.prepare_scriptable
    qconfig = interop.qconfig_property
    # -- end interop

    def _options(self) -> dict | None:
        return None

    def forward(self, input: Tensor, hx=None):
        if interop.records_torch_nn():  # jit.trace and ONNX export record torch.nn's forward
            return interop.torch_forward(self, input, hx)
        name = self._name
        is_lstm = len(cells.for_mode(self._mode).states) > 1  # the state is a tuple (h, c)
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None
        if hx is not None:
            if is_lstm and not isinstance(hx, (tuple, list)):
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
            if is_lstm and len(hx) != 2:
                raise RuntimeError(f"{name} expects two hidden states (h_0, c_0), got {len(hx)}")
            states = tuple(hx) if is_lstm else (hx,)
            for idx, s in enumerate(states):
                if s.dim() not in (1, 2):
                    what = f"hx[{idx}]" if is_lstm else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if states is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = tuple(zeros for _ in cells.for_mode(self._mode).states)
        elif not batched:
            states = tuple(s.unsqueeze(0) for s in states)
        # the checks ATen's *_cell functions make, with their messages
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        for idx, s in enumerate(states):
            if input.size(0) != s.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{idx} batch size {s.size(0)}")
            if s.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{idx} has inconsistent hidden_size: got {s.size(1)}, expected {self.hidden_size}"
                )
            if s.dim() != 2:  # torch.nn lets e.g. a (1, H, H) state through here
                raise RuntimeError(
                    f"{name}: for {'batched 2-D' if batched else 'unbatched 1-D'} input, the hidden "
                    f"state should be {2 if batched else 1}-D, got {s.dim() - (not batched)}-D"
                )
        if input.dtype != self.weight_ih.dtype:
            raise RuntimeError(
                f"{name} input dtype ({input.dtype}) does not match weight dtype ({self.weight_ih.dtype})"
            )
        _check_state_like(input, states)

        names = functional._param_names(cells.for_mode(self._mode).name, self.bias, False)
        out = functional.cell_step(
            self._mode,
            input,
            states if is_lstm else states[0],
            {n: getattr(self, n) for n in names},
            bias=self.bias,
            backend=getattr(self, "backend", "auto"),
            options=self._options(),
        )
        if not batched:
            out = (out[0].squeeze(0), out[1].squeeze(0)) if is_lstm else out.squeeze(0)
        return out


class LSTMCell(_Cell, nn.LSTMCell):
    """Drop-in :class:`torch.nn.LSTMCell` (keyword-only ``backend``)."""

    _mode, _name = "LSTM", "LSTMCell"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)


class GRUCell(_Cell, nn.GRUCell):
    """Drop-in :class:`torch.nn.GRUCell` (keyword-only ``backend``)."""

    _mode, _name = "GRU", "GRUCell"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)


class RNNCell(_Cell, nn.RNNCell):
    """Drop-in :class:`torch.nn.RNNCell` (keyword-only ``backend``)."""

    _name = "RNNCell"

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)

    @property
    def _mode(self) -> str:
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if self.nonlinearity not in modes:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return modes[self.nonlinearity]
