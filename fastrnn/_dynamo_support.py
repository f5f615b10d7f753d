"""Let torch.compile trace fastrnn's modules.

Dynamo refuses to trace any instance of nn.RNN/GRU/LSTM unless the global switch
``torch._dynamo.config.allow_rnn`` is set. fastrnn's modules must stay instances of those
classes (drop-in ``isinstance``), yet their forward is ordinary traceable Python around
registered ops. Flipping the switch globally would also change how a model's plain
torch.nn RNNs compile, so the refusal is lifted for fastrnn's modules only: Dynamo's
module-wrapping step runs with ``allow_rnn`` patched on when the module is a fastrnn one.
If a future torch moves that step, nothing is patched and compiling a fastrnn module
falls back to a graph break (the compile tests then fail loudly).
"""

from __future__ import annotations

import functools


def install(fastrnn_types: tuple) -> bool:
    try:
        from torch._dynamo import config
        from torch._dynamo.variables import builder
    except Exception:  # no dynamo in this build of torch
        return False
    cls = getattr(builder, "VariableBuilder", None)
    original = getattr(cls, "wrap_module", None)
    if original is None or not hasattr(config, "allow_rnn"):
        return False
    if getattr(original, "_fastrnn_patched", False):
        return True

    @functools.wraps(original)
    def wrap_module(self, value):
        if isinstance(value, fastrnn_types) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    wrap_module._fastrnn_patched = True
    cls.wrap_module = wrap_module
    return True
