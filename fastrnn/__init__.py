"""fastrnn: drop-in torch.nn recurrent layers whose recurrence runs in fused kernels.

``fastrnn.LSTM / GRU / RNN`` and the cells are subclasses of their torch.nn twins with the
same constructor, parameters and outputs, plus a keyword-only ``backend``:
"auto" (triton on CUDA, cpp on CPU), "triton", "cpp" or "reference" (pure PyTorch).

Within torch's other tools (details in :mod:`fastrnn.interop`): ``torch.jit.trace``,
``torch.jit.script`` and ``torch.onnx.export`` record the torch.nn twin with the same
Parameters, so a traced, scripted or exported model runs torch's kernels;
``fastrnn.quantize_dynamic`` quantizes fastrnn modules as torch.nn's would be; and
``torch.load(f, weights_only=True)`` of a whole model needs
``torch.serialization.safe_globals(fastrnn.safe_globals())``.
"""

from . import _dynamo_support, backends, cells, functional, numerics, ops, reference, testing  # noqa: F401
from .backends import available_backends
from .convert import convert
from .interop import quantize_dynamic, safe_globals
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .variants import LayerNormLSTM, LayerNormLSTMCell, PeepholeLSTM, PeepholeLSTMCell

_dynamo_support.install((LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell))

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "PeepholeLSTM",
    "PeepholeLSTMCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "available_backends",
    "convert",
    "quantize_dynamic",
    "safe_globals",
    "testing",
    "cells",
    "numerics",
    "reference",
    "functional",
    "ops",
]
