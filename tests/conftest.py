"""Shared test configuration: the backend under test comes from FASTRNN_BACKEND."""

import os

import pytest
import torch

# Every kernel output and workspace starts NaN-filled, so an element a backend forgets to
# write fails the parity checks (DESIGN.md's numerics contract). Read when fastrnn loads.
os.environ.setdefault("FASTRNN_POISON", "1")

BACKEND = os.environ.get("FASTRNN_BACKEND", "auto")
# The Triton lane runs on CPU through the interpreter, or on a GPU when there is one.
DEVICE = torch.device(os.environ.get("FASTRNN_TEST_DEVICE", "cpu"))


def pytest_report_header(config):
    import fastrnn

    return [f"fastrnn backend under test: {BACKEND} on {DEVICE}; available: {fastrnn.available_backends()}"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
