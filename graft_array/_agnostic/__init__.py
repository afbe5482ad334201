"""Generic array-API implementations: the fallback for any namespace."""
