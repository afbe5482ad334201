"""Chunks of batches in threads, with BLAS kept to one thread per chunk.

NumPy's small stacked LAPACK/BLAS calls (a 128 x 128 Gram, a 40 x 40 ``eigh``)
run one matrix after another on one core, and OpenBLAS's own threads only add
contention at those sizes. Splitting the batch axis into one chunk per core and
running each chunk in a thread (NumPy releases the GIL inside BLAS/LAPACK, our
Numba kernels are ``nogil``) while BLAS is limited to one thread uses every
core. ``threadpoolctl`` does the limiting; the previous limits are restored on
exit. Nothing here calls a parallel Numba kernel: those are not safe to launch
from several threads under every threading layer.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["map_batches", "n_workers", "threads_for"]

_CONTROLLER = None
_CHUNKS_PER_WORKER = 4
_MIN_CHUNK = 8


def n_workers():
    """Threads to use: Numba's thread count (honours ``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``)."""
    import numba

    return int(numba.get_num_threads())


def _blas_one_thread():
    """NumPy's BLAS (and any other loaded when first called) held to one thread, as a context manager."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def map_batches(fn, *arrays, workers=None):
    """``fn`` on matching chunks of the leading (batch) axis of ``arrays``, concatenated along it.

    ``fn`` must return one NumPy array whose leading axis is the chunk's batch
    axis, the same trailing shape and dtype for every chunk. Each thread copies
    its chunk's result into the output (no serial concatenation at the end).
    With one worker or one batch, ``fn`` runs once on everything, BLAS threads
    untouched.
    """
    nb = arrays[0].shape[0]
    workers = n_workers() if workers is None else int(workers)
    if min(nb, workers) <= 1:
        return fn(*arrays)
    # a few chunks per worker (of at least _MIN_CHUNK batches), taken in turn: a thread slowed
    # down by other work on the machine just takes fewer of them
    parts = max(workers, min(_CHUNKS_PER_WORKER * workers, nb // _MIN_CHUNK))
    parts = min(parts, nb)
    bounds = [(i * nb // parts, (i + 1) * nb // parts) for i in range(parts)]
    out = []  # the result, allocated by the first chunk to finish; each thread copies its own part into it
    lock = threading.Lock()

    def run(lo, hi):
        part = fn(*(a[lo:hi] for a in arrays))
        with lock:
            if not out:
                out.append(np.empty((nb,) + part.shape[1:], dtype=part.dtype))
        out[0][lo:hi] = part

    with _blas_one_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, lo, hi) for lo, hi in bounds]
        for f in futures:
            f.result()
    return out[0]


#: below this many rows (all batches of a call together) the Numba kernels run on the calling thread
SERIAL_ROWS = 4096


class threads_for:
    """Context manager: Numba's parallel kernels use one thread for a small call of ``rows`` rows.

    A parallel region costs a wake-up of the other threads; on a call of a few
    thousand rows that is most of the work, and right after a torch operation
    (torch's OpenMP threads keep spinning for a while) the wake-up waits for a
    busy core. BLAS is held to one thread for the same reason. ``numba.set_num_threads``
    is per calling thread, so other threads are not affected; the previous
    counts are restored on exit.
    """

    def __init__(self, rows):
        self.rows = int(rows)
        self._old = None
        self._blas = None

    def __enter__(self):
        if self.rows <= SERIAL_ROWS:
            import numba

            self._old = numba.get_num_threads()
            if self._old > 1:
                numba.set_num_threads(1)
                self._blas = _blas_one_thread()  # the small LAPACK calls too (eigh of one batch Gram)
                self._blas.__enter__()
            else:
                self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            import numba

            numba.set_num_threads(self._old)
            self._blas.__exit__(*exc)
            self._old = self._blas = None
        return False
