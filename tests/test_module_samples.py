"""PyTorch's own module samples (torch.testing._internal.common_modules) for the six
recurrent modules, each run through the fastrnn twin and compared with torch.nn: every
output, final state and gradient, at the numerics table's bounds (fp32 against torch.nn at
2e-5; fp64 against the autograd oracle and torch.nn at 1e-9)."""

import pytest
import torch
from torch import nn

from conftest import BACKEND, DEVICE
from fastrnn import testing
from fastrnn.convert import TWINS

_frozen = torch.backends.flags_frozen()
common_modules = pytest.importorskip("torch.testing._internal.common_modules")
# importing torch's test utilities freezes torch.backends' flags for the whole process
# (disable_global_flags); other test files set cudnn.allow_tf32 through monkeypatch
if not _frozen:
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert not torch.backends.flags_frozen()

NN_TO_OURS = TWINS  # torch.nn class -> its fastrnn twin
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
DTYPES = [torch.float32, torch.float64] if BACKEND != "triton" else [torch.float32]


def _samples():
    out = []
    # the samples draw their inputs at collection time: seed them so every run is the same
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _collect(out)
    return out


def _collect(out):
    for info in common_modules.module_db:
        if info.module_cls not in RECURRENT:
            continue
        for dtype in DTYPES:
            for training in (True, False):
                samples = info.module_inputs_func(
                    info, device=str(DEVICE), dtype=dtype, requires_grad=False, training=training
                )
                for i, sample in enumerate(samples):
                    name = f"{info.module_cls.__name__}-{i}-{'train' if training else 'eval'}-{str(dtype)[6:]}"
                    out.append(pytest.param(info.module_cls, sample, dtype, training, id=name))


def _against_oracle(ours, theirs, inputs) -> str:
    """On failure: how far each side is from the float64 oracle, tensor by tensor."""
    oracle = testing.oracle(ours)
    a = testing.compare(ours, oracle, *inputs, sync_weights=False)
    b = testing.compare(theirs, oracle, *inputs, sync_weights=False)
    return "vs float64 oracle:\n" + "\n".join(
        f"{x.name:<20} fastrnn {x.rel_rms:.3e}  torch.nn {y.rel_rms:.3e}" for x, y in zip(a.rows, b.rows)
    )


@pytest.mark.parametrize("nn_cls,sample,dtype,training", _samples())
def test_module_sample(nn_cls, sample, dtype, training):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    theirs = nn_cls(*args, **kwargs).to(device=DEVICE, dtype=dtype).train(training)
    ours = NN_TO_OURS[nn_cls](*args, **kwargs).to(device=DEVICE, dtype=dtype).train(training)
    ours.load_state_dict(theirs.state_dict())
    inputs = sample.forward_input.args
    assert not sample.forward_input.kwargs
    report = testing.compare(ours, theirs, *inputs)
    assert report.passed, f"\n{report}\n{_against_oracle(ours, theirs, inputs)}"
    if dtype == torch.float64:
        report = testing.compare(ours, testing.oracle(ours), *inputs, sync_weights=False)
        assert report.passed, f"\n{report}"
