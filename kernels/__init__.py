"""Triton kernels for fastrnn (installed as ``fastrnn.kernels``)."""
