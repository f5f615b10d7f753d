"""``fastrnn.convert``: swap torch.nn recurrent modules inside a model for their fastrnn twins."""

from __future__ import annotations

import warnings

from torch import nn

from . import backends
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .variants import _VariantCell, _VariantLayer

__all__ = ["convert"]

TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}


def convert(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every nn.LSTM/GRU/RNN and cell inside ``module`` (itself included), recursively
    and in place, by its fastrnn twin, and return ``module``.

    The modules keep their identity, attributes, hooks and Parameter objects (only their
    class changes, to a subclass that adds ``backend``), so an optimizer built before the
    conversion keeps working and ``state_dict`` keys are unchanged. Modules that are
    already fastrnn get the new ``backend``. Subclasses of torch.nn's recurrent classes are
    left alone with a warning: their own forward may rely on internals fastrnn replaces.

    Example::

        >>> model = nn.Sequential(nn.Embedding(100, 16), nn.LSTM(16, 32))
        >>> fastrnn.convert(model, backend="reference")[1]
        LSTM(16, 32)
    """
    backends.check_name(backend)
    # a variant that torch.jit.script replaced by its scriptable module inside a parent
    # (TorchScript's protocol writes it into the eager parent too) comes back
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            source = getattr(child, "_fastrnn_source", None)
            if source is not None:
                setattr(parent, name, source[0])
    for m in module.modules():
        if isinstance(m, (*TWINS.values(), _VariantLayer, _VariantCell)):
            m.backend = backend
        elif type(m) in TWINS:
            m.__class__ = TWINS[type(m)]
            m.backend = backend
        elif isinstance(m, tuple(TWINS)):
            warnings.warn(
                f"fastrnn.convert: left {type(m).__qualname__} unconverted: it subclasses "
                f"{next(c for c in TWINS if isinstance(m, c)).__name__} and may depend on its forward",
                UserWarning,
                stacklevel=2,
            )
    return module
