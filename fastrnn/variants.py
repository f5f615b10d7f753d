"""LSTM variants torch.nn does not have, as fused recurrences: PeepholeLSTM, LayerNormLSTM
and their cells.

They take nn.LSTM's constructor arguments and inputs (num_layers, bias, batch_first, dropout,
bidirectional, proj_size for PeepholeLSTM, unbatched input, PackedSequence, optional
(h_0, c_0), device, dtype, plus the keyword-only ``backend``) and return what nn.LSTM
returns. Their parameters are nn.LSTM's where the math shares them, plus their own; each
cell's math, parameters and backward are stated once in :mod:`fastrnn.cells`
(``PEEPHOLE_LSTM``, ``LAYERNORM_LSTM``). They are not nn.LSTM subclasses: code that
checks ``isinstance(m, nn.LSTM)`` expects nn.LSTM's parameters.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn
from torch.nn import Parameter

from . import backends, cells
from .modules import _Cell, _RecurrentLayer

__all__ = ["PeepholeLSTM", "LayerNormLSTM", "PeepholeLSTMCell", "LayerNormLSTMCell"]


def _init(module: nn.Module, params, hidden_size: int) -> None:
    """torch.nn's RNN initialisation, uniform in [-1/sqrt(H), 1/sqrt(H)], for the parameters
    marked "uniform"; LayerNorm gains start at 1 and shifts at 0. ``params``: (name, init)
    pairs (plain strings, so that a pickled module holds no spec functions)."""
    k = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    with torch.no_grad():
        for name, init in params:
            w = getattr(module, name)
            if init == "ones":
                w.fill_(1.0)
            elif init == "zeros":
                w.zero_()
            else:
                w.uniform_(-k, k)


def _check_sizes(input_size, hidden_size) -> None:
    """torch.nn's checks and messages (nn.RNNBase / nn.RNNCellBase)."""
    if not isinstance(input_size, int) or isinstance(input_size, bool):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int) or isinstance(hidden_size, bool):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")


def _check_eps(eps) -> float:
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return float(eps)


class _VariantLayer(_RecurrentLayer, nn.Module):
    """nn.LSTM's layer behaviour for a cell of :mod:`fastrnn.cells` that torch.nn lacks: the
    constructor checks, parameter registration and naming (``<name>_l{k}[_reverse]``), input
    and state checks (torch.nn's own functions and messages) and the forward of
    :class:`fastrnn.modules._RecurrentLayer`."""

    _spec: cells.Cell
    # torch.nn's checks, called with this module as ``self`` (they read only its sizes)
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.LSTM.get_expected_hidden_size
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden
    extra_repr = nn.RNNBase.extra_repr
    # torch's quantization has no kernels for these: like any custom module they stay float
    qconfig = None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        _check_sizes(input_size, hidden_size)
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.mode = self._spec.modes[0]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.backend = backends.check_name(backend)
        factory = {"device": device, "dtype": dtype}
        D = 2 if bidirectional else 1
        out = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        specs = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out * D
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d == 1 else "")
                names = []
                for p in self._spec.layer_params(bias, proj_size > 0):
                    name = p.name + suffix
                    shape = p.shape(layer_input, hidden_size, proj_size)
                    self.register_parameter(name, Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                    specs.append((name, p.init))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self._param_specs = specs
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init(self, self._param_specs, self.hidden_size)

    @property
    def _flat_weights(self) -> list:
        return [getattr(self, n) for n in self._flat_weights_names]

    def _update_flat_weights(self) -> None:
        """The weights are read from the module on every call: nothing to refresh."""

    @property
    def all_weights(self) -> list:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """nn.LSTM's cuDNN weight packing; fastrnn's kernels need none."""


class PeepholeLSTM(_VariantLayer):
    r"""LSTM with diagonal peephole connections (Gers, Schraudolph and Schmidhuber 2002, as
    in Graves 2013): the cell state feeds the gates. Per layer and direction,

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + p_i \odot c_{t-1}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + p_f \odot c_{t-1}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + p_o \odot c_t) \\
        h_t = o_t \odot \tanh(c_t) \quad (\text{then } h_t = W_{hr} h_t \text{ with proj\_size} > 0)

    Arguments, inputs and outputs as :class:`torch.nn.LSTM`, plus keyword-only ``backend``.
    Parameters: nn.LSTM's (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}``, ``weight_hr_l{k}``, ``_reverse`` suffixes) and ``weight_ch_l{k}`` of
    shape (3*hidden_size,) holding p_i, p_f, p_o, initialised like the others. With zero
    peepholes it computes exactly nn.LSTM.

    Example::

        >>> m = fastrnn.PeepholeLSTM(16, 32, num_layers=2, batch_first=True)
        >>> out, (h_n, c_n) = m(torch.randn(4, 10, 16))
        >>> out.shape, c_n.shape
        (torch.Size([4, 10, 32]), torch.Size([2, 4, 32]))
    """

    _spec = cells.PEEPHOLE_LSTM


class LayerNormLSTM(_VariantLayer):
    r"""LSTM with layer normalisation of the gate inputs and the cell state (after Ba, Kiros
    and Hinton 2016; the LayerNormLSTMCell of PyTorch's RNN benchmarks). Per layer and direction,

    .. math::
        a_t = \mathrm{LN}_{ih}(W_{ih} x_t) + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) \quad (4H) \\
        i, f, g, o = \sigma(a_i), \sigma(a_f), \tanh(a_g), \sigma(a_o) \\
        c_t = \mathrm{LN}_c(f \odot c_{t-1} + i \odot g), \quad h_t = o \odot \tanh(c_t)

    with LN over the last dimension (biased variance, ``eps``) and the normalised c as the
    carried state. Arguments as :class:`torch.nn.LSTM` without ``proj_size``, plus keyword-only
    ``eps`` (1e-5) and ``backend``. Parameters per layer and direction: ``weight_ih_l{k}``,
    ``weight_hh_l{k}``, ``ln_ih_weight_l{k}``, ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``,
    ``ln_hh_bias_l{k}`` (4*hidden_size), ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}``
    (hidden_size); LN gains start at 1, shifts at 0; ``bias=False`` drops the three shifts.
    There is no bias_ih/bias_hh: the LN shifts play that role.
    """

    _spec = cells.LAYERNORM_LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        eps = _check_eps(eps)
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
            backend=backend,
        )
        self.eps = eps

    def _options(self) -> dict:
        return {"eps": self.eps}

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.eps == 1e-5 else f"{s}, eps={self.eps}"


class _VariantCell(_Cell, nn.Module):
    """nn.LSTMCell's behaviour (checks, unbatched input, optional (h_0, c_0)) for a variant
    cell; parameters are the layer's without the ``_l{k}`` suffix."""

    _spec: cells.Cell
    qconfig = None

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *, backend="auto"
    ):
        super().__init__()
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        _check_sizes(input_size, hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.backend = backends.check_name(backend)
        self._mode = self._spec.modes[0]
        factory = {"device": device, "dtype": dtype}
        self._param_specs = []
        for p in self._spec.layer_params(bias, False):
            self.register_parameter(p.name, Parameter(torch.empty(p.shape(input_size, hidden_size, 0), **factory)))
            self._param_specs.append((p.name, p.init))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init(self, self._param_specs, self.hidden_size)

    def extra_repr(self) -> str:
        return nn.RNNCellBase.extra_repr(self)


class PeepholeLSTMCell(_VariantCell):
    """One step of :class:`PeepholeLSTM` (as :class:`torch.nn.LSTMCell` is of nn.LSTM).
    Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh`` (4H),
    ``weight_ch`` (3H) = p_i, p_f, p_o."""

    _spec = cells.PEEPHOLE_LSTM
    _name = "PeepholeLSTMCell"


class LayerNormLSTMCell(_VariantCell):
    """One step of :class:`LayerNormLSTM`. Parameters: ``weight_ih`` (4H, I), ``weight_hh``
    (4H, H), ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias`` (4H),
    ``ln_c_weight``, ``ln_c_bias`` (H); keyword-only ``eps`` (1e-5)."""

    _spec = cells.LAYERNORM_LSTM
    _name = "LayerNormLSTMCell"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *, eps=1e-5, backend="auto"
    ):
        super().__init__(input_size, hidden_size, bias, device, dtype, backend=backend)
        self.eps = _check_eps(eps)

    def _options(self) -> dict:
        return {"eps": self.eps}

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.eps == 1e-5 else f"{s}, eps={self.eps}"


# the layer that runs each variant cell (the parity command and the tests build from it)
LAYERS = {"peephole_lstm": PeepholeLSTM, "layernorm_lstm": LayerNormLSTM}
CELL_MODULES = {"peephole_lstm": PeepholeLSTMCell, "layernorm_lstm": LayerNormLSTMCell}
