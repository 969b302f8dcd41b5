"""Triton kernels for fastmlr's ops (installed as fastmlr.kernels)."""
