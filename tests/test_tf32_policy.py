"""fastrnn's TF32 rule for fp32 recurrent products is torch.nn's on cuDNN, read in one place
(fastrnn.numerics.cudnn_rnn_tf32) without the legacy flag's error when conv and rnn differ.
The switches are plain settings, so this runs on any machine."""

import pytest
import torch

from fastrnn.numerics import cudnn_rnn_tf32, tf32_allowed

NEW_API = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None) is not None


@pytest.fixture
def switches():
    """Restores every TF32 switch this test touches."""
    cudnn = torch.backends.cudnn
    saved = [(obj, "fp32_precision", obj.fp32_precision) for obj in (cudnn.rnn, cudnn.conv, cudnn, torch.backends)]
    yield cudnn
    for obj, name, value in reversed(saved):
        setattr(obj, name, value)


@pytest.mark.skipif(not NEW_API, reason="torch without torch.backends.cudnn.rnn.fp32_precision")
@pytest.mark.parametrize(
    "rnn,conv,cudnn,generic,want",
    [
        ("tf32", "tf32", "none", "none", True),  # PyTorch's default
        ("ieee", "tf32", "none", "none", False),  # conv and rnn apart: the legacy flag raises here
        ("tf32", "ieee", "none", "none", True),
        ("none", "none", "tf32", "none", True),  # rnn defers to cuDNN's setting
        ("none", "none", "none", "tf32", True),  # then to the global one
        ("none", "none", "ieee", "tf32", False),
        ("none", "none", "none", "none", False),
    ],
)
def test_follows_the_rnn_setting(switches, rnn, conv, cudnn, generic, want):
    torch.backends.fp32_precision = generic
    switches.fp32_precision = cudnn
    switches.conv.fp32_precision = conv
    switches.rnn.fp32_precision = rnn
    assert cudnn_rnn_tf32() is want
    assert tf32_allowed(torch.device("cuda"), torch.float32) is want
    assert not tf32_allowed(torch.device("cuda"), torch.bfloat16)
    assert not tf32_allowed(torch.device("cpu"), torch.float32)


@pytest.mark.skipif(not NEW_API, reason="torch without torch.backends.cudnn.rnn.fp32_precision")
@pytest.mark.parametrize("flag", [False, True])
def test_the_legacy_switch_still_decides(switches, flag):
    """What the tests and users set with the older API (torch.backends.cudnn.allow_tf32)."""
    switches.allow_tf32 = flag
    assert cudnn_rnn_tf32() is flag
