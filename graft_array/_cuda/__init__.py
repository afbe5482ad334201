"""CuPy RawModule sources and launchers (GPU paths)."""
