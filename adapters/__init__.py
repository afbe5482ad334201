"""Adapters from frameworks (NumPy, scikit-learn, PyTorch) to the graft_array core."""
