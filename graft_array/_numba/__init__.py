"""Numba CPU kernels (imported lazily: ``import graft_array`` never loads numba)."""
