"""PyTorch's own module samples (torch.testing._internal.common_modules) for the six
recurrent modules, each run through the fastrnn twin and compared with torch.nn: every
output, final state and gradient, at the numerics table's bounds (fp32 against torch.nn at
2e-5; fp64 against the autograd oracle and torch.nn at 1e-9)."""
import pytest
import torch
from torch import nn

from fastrnn import testing
from fastrnn.convert import TWINS
from conftest import BACKEND, DEVICE

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

NN_TO_OURS = TWINS  # torch.nn class -> its fastrnn twin
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
DTYPES = [torch.float32, torch.float64] if BACKEND != "triton" else [torch.float32]


def _samples():
    out = []
    for info in common_modules.module_db:
        if info.module_cls not in RECURRENT:
            continue
        for dtype in DTYPES:
            for training in (True, False):
                samples = info.module_inputs_func(info, device=str(DEVICE), dtype=dtype,
                                                  requires_grad=False, training=training)
                for i, sample in enumerate(samples):
                    name = f"{info.module_cls.__name__}-{i}-{'train' if training else 'eval'}-{str(dtype)[6:]}"
                    out.append(pytest.param(info.module_cls, sample, dtype, training, id=name))
    return out


@pytest.mark.parametrize("nn_cls,sample,dtype,training", _samples())
def test_module_sample(nn_cls, sample, dtype, training):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    theirs = nn_cls(*args, **kwargs).to(device=DEVICE, dtype=dtype).train(training)
    ours = NN_TO_OURS[nn_cls](*args, **kwargs).to(device=DEVICE, dtype=dtype).train(training)
    ours.load_state_dict(theirs.state_dict())
    inputs = sample.forward_input.args
    assert not sample.forward_input.kwargs
    report = testing.compare(ours, theirs, *inputs)
    assert report.passed, f"\n{report}"
    if dtype == torch.float64:
        report = testing.compare(ours, testing.oracle(ours), *inputs, sync_weights=False)
        assert report.passed, f"\n{report}"
