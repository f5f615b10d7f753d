"""The lane a run is in: on a machine with a GPU, the Triton tests must run on it unless told
otherwise, and a run that tested the CPU instead says so (tests/conftest.py)."""

import pytest
import torch

import conftest


@pytest.mark.parametrize(
    "backend,cuda,interp,env,want",
    [
        ("triton", True, False, None, "cuda"),  # a GPU machine: the GPU lane by default
        ("triton", True, True, None, "cpu"),  # the interpreter runs CPU tensors
        ("triton", True, False, "cpu", "cpu"),  # asked for
        ("cpp", True, False, None, "cpu"),  # the C++ backend takes CPU tensors
        ("triton", False, True, None, "cpu"),  # this machine's interpreter lane
        ("reference", True, False, "cuda", "cuda"),
    ],
)
def test_device_of_each_lane(monkeypatch, backend, cuda, interp, env, want):
    monkeypatch.setattr(conftest, "BACKEND", backend)
    monkeypatch.setattr(conftest, "CUDA", cuda)
    monkeypatch.setattr(conftest, "INTERPRETER", interp)
    if env is None:
        monkeypatch.delenv("FASTRNN_TEST_DEVICE", raising=False)
    else:
        monkeypatch.setenv("FASTRNN_TEST_DEVICE", env)
    device = conftest._test_device()
    assert device.type == want
    monkeypatch.setattr(conftest, "DEVICE", device)
    assert conftest.gpu_lane_skipped() == (cuda and backend == "triton" and want == "cpu")


def test_cuda_asked_for_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(conftest, "CUDA", False)
    monkeypatch.setenv("FASTRNN_TEST_DEVICE", "cuda")
    with pytest.raises(pytest.UsageError, match="no CUDA device"):
        conftest._test_device()


def test_this_run_device_is_consistent():
    if conftest.DEVICE.type == "cuda":
        assert torch.cuda.is_available()
    assert not (conftest.gpu_lane_skipped() and conftest.DEVICE.type == "cuda")
