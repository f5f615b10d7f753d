"""Shared test configuration: the backend under test comes from FASTRNN_BACKEND."""

import os

import pytest
import torch

# Every kernel output and workspace starts NaN-filled, so an element a backend forgets to
# write fails the parity checks (DESIGN.md's numerics contract). Read when fastrnn loads.
os.environ.setdefault("FASTRNN_POISON", "1")

from fastrnn.backends import _interpreting  # after FASTRNN_POISON is set: fastrnn reads it on import

BACKEND = os.environ.get("FASTRNN_BACKEND", "auto")
INTERPRETER = _interpreting()
CUDA = torch.cuda.is_available()


def _test_device() -> torch.device:
    """FASTRNN_TEST_DEVICE, else: CUDA for the Triton lane on a machine with a GPU (and not
    under the interpreter), CPU otherwise. So ``FASTRNN_BACKEND=triton pytest`` on a GPU
    machine tests the GPU without a second variable to forget."""
    name = os.environ.get("FASTRNN_TEST_DEVICE")
    if name is None:
        name = "cuda" if BACKEND == "triton" and CUDA and not INTERPRETER else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not CUDA:
        raise pytest.UsageError(f"FASTRNN_TEST_DEVICE={name}: no CUDA device here")
    return device


DEVICE = _test_device()


def gpu_lane_skipped() -> bool:
    """A CUDA device is present, the Triton backend is under test, yet the tests run on CPU."""
    return CUDA and BACKEND == "triton" and DEVICE.type != "cuda"


def pytest_report_header(config):
    import fastrnn

    lines = [f"fastrnn backend under test: {BACKEND} on {DEVICE}; available: {fastrnn.available_backends()}"]
    if DEVICE.type == "cuda":
        lines.append(f"GPU lane: {torch.cuda.get_device_name(DEVICE)} (CUDA {torch.version.cuda})")
    if gpu_lane_skipped():
        lines.append("WARNING: a CUDA device is present but the Triton tests run on CPU (see pytest_terminal_summary)")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The GPU lane says what it ran, so a GPU session cannot mistake a CPU run for it."""
    if DEVICE.type != "cuda" and not gpu_lane_skipped():
        return
    counts = {k: len(terminalreporter.stats.get(k, [])) for k in ("passed", "failed", "error", "skipped")}
    if DEVICE.type == "cuda":
        terminalreporter.write_line(
            f"GPU lane on {torch.cuda.get_device_name(DEVICE)}: "
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + " (every test of this run used CUDA tensors)"
        )
    else:
        terminalreporter.write_line(
            "WARNING: a CUDA device is present but these tests ran on CPU: the GPU lane did not run "
            "(unset TRITON_INTERPRET and FASTRNN_TEST_DEVICE, or set FASTRNN_TEST_DEVICE=cuda)",
            red=True,
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
