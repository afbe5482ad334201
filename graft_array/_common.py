"""Small helpers shared by every backend (no heavy imports here)."""

METHODS = ("deim", "volume", "tournament")

#: selection strategies of select: GRAFT and the baselines with the same API
STRATEGIES = ("graft", "random", "craig", "gradmatch")


def default_tile_rows(n, k_eff):
    """Rows per tile of the tournament method when the caller gives none.

    Shared by the Numba kernels and the generic twin so that both pick the same
    tiles and therefore the same rows.

    The smallest power of two ``T >= sqrt(k_eff * n)``: then the ``n / T`` tiles
    of the first level leave at most about ``T`` candidates, so the tournament
    has two levels and its final DEIM sees every first-level winner (fewer,
    larger final pools lose less volume than deeper trees; the speed hardly
    depends on ``T`` since each row costs about ``k_eff**2 / 2`` multiply-adds
    whatever the tile). Clamped to ``[max(256, 4 k_eff), 2**20 / k_eff]``: at
    least four candidates' worth of rows per winner, and a float64 tile buffer
    of at most 8 MiB (float32 half that), well inside the L3 cache.
    """
    k = max(1, int(k_eff))
    t = 1
    while t * t < k * int(n):
        t *= 2
    lo = max(256, 4 * k)
    hi = max(lo, (1 << 20) // k)
    return int(min(max(t, lo), hi))
