"""fastrnn: drop-in torch.nn recurrent layers whose recurrence runs in fused kernels.

``fastrnn.LSTM / GRU / RNN`` and the cells are subclasses of their torch.nn twins with the
same constructor, parameters and outputs, plus a keyword-only ``backend``:
"auto" (triton on CUDA, cpp on CPU), "triton", "cpp" or "reference" (pure PyTorch).
"""
from . import backends, functional, ops, reference, testing  # noqa: F401
from .backends import available_backends
from .convert import convert
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

from . import _dynamo_support

_dynamo_support.install((LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell))

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "available_backends",
    "convert",
    "testing",
    "reference",
    "functional",
    "ops",
]
