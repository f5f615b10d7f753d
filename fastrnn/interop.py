"""fastrnn inside torch's other tools: jit.trace, TorchScript, ONNX, quantization, torch.load.

fastrnn's eager forward calls its kernels through pybind functions and registered ops that
TorchScript cannot see or compile. So wherever torch records or compiles a model into its
own format, a fastrnn module presents itself as its torch.nn twin (same class layout, the
same Parameter objects), and the recorded model runs torch's kernels:

* ``torch.jit.trace`` and ``torch.onnx.export`` (the TorchScript exporter, and
  ``dynamo=True``): while :func:`records_torch_nn` is true, ``forward`` is torch.nn's own,
  which records one ``aten::lstm`` / ``aten::gru`` / ... node valid for any sequence length
  and batch size. ``torch.export.export`` on its own is not affected: its graph keeps
  fastrnn's registered ops (they have fake implementations), so programs compiled from it
  run fastrnn's kernels.
* ``torch.jit.script``: ``__prepare_scriptable__`` returns the torch.nn twin sharing the
  Parameters. For a fastrnn module inside a scripted parent, TorchScript's protocol puts
  the twin into the parent's eager module too (the numbers are unchanged, the kernels are
  torch's); ``fastrnn.convert(model)`` brings fastrnn back.
* ``torch.ao.quantization.quantize_dynamic`` matches module classes exactly and leaves
  fastrnn modules unquantized; :func:`quantize_dynamic` (same arguments) quantizes them as
  their torch.nn twins would be, and torch's quantization passes warn when they meet a
  fastrnn LSTM, GRU or cell.
* ``torch.load(f, weights_only=True)`` of a whole pickled model::

      with torch.serialization.safe_globals(fastrnn.safe_globals()):
          model = torch.load(f, weights_only=True)

  (add the model's other classes, e.g. ``torch.nn.Sequential``, as torch requires).

The LSTM variants of :mod:`fastrnn.variants` have no torch.nn twin: while recorded they run
loops of their own (TorchScript; torch's ``scan`` for the ``dynamo=True`` exporter), and
``torch.jit.script`` compiles a module calling them (:mod:`fastrnn._script`).

ONNX export of an LSTM with ``proj_size > 0`` raises a ValueError: torch.nn cannot export
it either, and ONNX's LSTM operator has no projection (an LSTM node followed by a MatMul
is not equivalent, since the projected state feeds the next step).
"""

from __future__ import annotations

import copy
import sys
import warnings

import torch
from torch import nn

__all__ = ["records_torch_nn", "torch_twin", "to_torch", "quantize_dynamic", "safe_globals"]

_NN_CLASSES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
# torch's dynamic quantization has modules for these (not for nn.RNN)
_QUANTIZABLE = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def _fastrnn_classes() -> tuple:
    from . import modules

    return tuple(getattr(modules, n) for n in modules.__all__)


_ONNX_FLAGS = "torch.onnx._internal.exporter._flags"


def records_torch_nn() -> bool:
    """True while torch.jit.trace or torch.onnx.export records the model.

    ``torch.jit.is_tracing()`` covers tracing and the TorchScript-based ONNX exporter (it
    traces); the ``dynamo=True`` exporter sets ``_is_onnx_exporting`` in torch.onnx's
    flags module around the whole export (torch >= 2.6; it is what
    ``torch.onnx.is_in_onnx_export()`` reads). The flag is read directly because every
    eager forward asks: the public function costs ~3 us a call, this ~0.3 us, and Dynamo
    refuses to trace torch.onnx's functions but reads a module global. Before the exporter
    is imported no export can be running.
    """
    return torch.jit.is_tracing() or _dynamo_onnx_export()


def _dynamo_onnx_export() -> bool:
    flags = sys.modules.get(_ONNX_FLAGS)
    return flags is not None and bool(flags._is_onnx_exporting)


def onnx_export() -> bool:
    """True during either ONNX export (Dynamo folds the public function to False)."""
    return _dynamo_onnx_export() or (torch.jit.is_tracing() and torch.onnx.is_in_onnx_export())


def torch_twin(module: nn.Module) -> type:
    """The torch.nn class a fastrnn module (or a subclass of one) stands in for."""
    for cls in type(module).__mro__:
        if cls in _NN_CLASSES:
            return cls
    raise TypeError(f"{type(module).__qualname__} is not a fastrnn or torch.nn recurrent module")


def torch_forward(module: nn.Module, input, hx=None):
    """``forward`` while a model is recorded: torch.nn's own, on the same Parameters (a
    variant of :mod:`fastrnn.variants`: its scripted loops, see :mod:`fastrnn._script`)."""
    from . import _script

    if _script.is_variant(module):
        return _script.record(module, input, hx, onnx=onnx_export(), dynamo=_dynamo_onnx_export())
    twin = torch_twin(module)
    if onnx_export() and getattr(module, "proj_size", 0) > 0:
        raise ValueError(
            "fastrnn.LSTM with proj_size > 0 cannot be exported to ONNX: ONNX's LSTM operator "
            "has no projection and torch.nn.LSTM cannot export it either. torch.jit.trace and "
            "torch.export.export do support it."
        )
    return twin.forward(module, input, hx)


def to_torch(module: nn.Module) -> nn.Module:
    """A torch.nn twin of one fastrnn module, sharing its Parameter objects (and hooks).

    Used by ``__prepare_scriptable__``; the returned module computes the same function with
    torch's kernels, and training it trains the fastrnn module's parameters.
    """
    twin_cls = torch_twin(module)
    twin = twin_cls.__new__(twin_cls)
    state = dict(module.__dict__)
    state.pop("backend", None)
    # fresh containers, same tensors: changing the twin's registrations leaves the module alone
    for key, value in list(state.items()):
        if isinstance(value, dict):
            state[key] = type(value)(value) if not hasattr(value, "default_factory") else copy.copy(value)
        elif isinstance(value, list):
            state[key] = list(value)
    twin.__dict__.update(state)
    return twin


def prepare_scriptable(self):
    """``__prepare_scriptable__``: TorchScript compiles the torch.nn twin (same Parameters);
    for a variant of :mod:`fastrnn.variants`, a module running its scripted loops."""
    from . import _script

    if _script.is_variant(self):
        return _script.scriptable(self)
    return to_torch(self)


# ------------------------------------------------------------------------------------------
# torch.ao.quantization
# ------------------------------------------------------------------------------------------
def _get_qconfig(self):
    try:
        return self.__dict__["qconfig"]
    except KeyError:
        raise AttributeError("qconfig") from None


def _set_qconfig(self, value):
    # torch.ao.quantization's propagate_qconfig_ sets ``qconfig`` on every module; it and
    # convert() then match classes exactly, so a fastrnn module stays float without a word.
    twin = torch_twin(self)
    if twin in _QUANTIZABLE:
        warnings.warn(
            f"torch.ao.quantization leaves fastrnn.{type(self).__name__} unquantized: it matches "
            f"module classes exactly, and fastrnn.{twin.__name__} is not torch.nn.{twin.__name__}. "
            f"To quantize it as torch.nn.{twin.__name__} would be, call "
            "fastrnn.quantize_dynamic(model, ...) with the same arguments.",
            UserWarning,
            stacklevel=3,
        )
    self.__dict__["qconfig"] = value


def _del_qconfig(self):
    try:
        del self.__dict__["qconfig"]
    except KeyError:
        raise AttributeError("qconfig") from None


qconfig_property = property(_get_qconfig, _set_qconfig, _del_qconfig)


def quantize_dynamic(model: nn.Module, qconfig_spec=None, dtype=torch.qint8, mapping=None, inplace: bool = False):
    """``torch.ao.quantization.quantize_dynamic`` that also quantizes fastrnn modules.

    Same arguments and result as torch's; a fastrnn module is quantized exactly as its
    torch.nn twin would be (the result holds torch's dynamic-quantized LSTM/GRU/cell
    modules, with the same numbers as quantizing the twin), and fastrnn classes are
    accepted wherever torch.nn classes are in ``qconfig_spec``. Modules the spec leaves
    float stay fastrnn modules.
    """
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

    ours = _fastrnn_classes()
    if qconfig_spec is not None:

        def key(k):
            return torch_twin_class(k) if isinstance(k, type) and issubclass(k, ours) else k

        if isinstance(qconfig_spec, dict):
            qconfig_spec = {key(k): v for k, v in qconfig_spec.items()}
        else:
            qconfig_spec = {key(k) for k in qconfig_spec}
    if not inplace:
        model = copy.deepcopy(model)
    flipped = [(m, type(m)) for m in model.modules() if type(m) in ours]
    try:
        for m, _ in flipped:
            m.__class__ = torch_twin(m)
        with warnings.catch_warnings():
            # torch deprecates its eager-mode quantization API; that is torch's to say
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            model = torch_quantize_dynamic(model, qconfig_spec, dtype=dtype, mapping=mapping, inplace=True)
    finally:
        for m, cls in flipped:
            m.__class__ = cls
    return model


def torch_twin_class(cls: type) -> type:
    for base in cls.__mro__:
        if base in _NN_CLASSES:
            return base
    raise TypeError(f"{cls.__qualname__} is not a recurrent module class")


# ------------------------------------------------------------------------------------------
# torch.load(weights_only=True)
# ------------------------------------------------------------------------------------------
def safe_globals() -> list:
    """The fastrnn classes a pickled model may contain, for ``torch.serialization.safe_globals``."""
    from . import variants

    return [*_fastrnn_classes(), *(getattr(variants, n) for n in variants.__all__)]
