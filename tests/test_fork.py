"""fork() children (DataLoader workers, multiprocessing "fork" pools) run select and maxvol after the parent did.

Each case runs in a fresh interpreter, so the threading layer is the one the
case asks for: "default" is what Numba picks with our settings (TBB where the
``tbb`` package is installed, else GNU OpenMP with the array-API fallback in the
children) and "omp" forces the fallback. A child killed by Numba's GNU OpenMP
check shows up as a broken pool / DataLoader error, not as a hang.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import graft_array as ga

    def work(i):
        X = np.random.default_rng(i).standard_normal((8, 64, 16))
        return (np.asarray(ga.select(X, fraction=0.25, random_state=0)), np.asarray(ga.maxvol(X, 8)),
                np.asarray(ga.maxvol(X[0], 8)))

    def probe(_):
        X = np.random.default_rng(1).standard_normal((16, 4))
        try:
            ga.select(X, fraction=0.5, backend="numba")
            err = None
        except ga.BackendUnavailableError:
            err = "BackendUnavailableError"
        return ga.which_backend(X), err

    if __name__ == "__main__":
        kind = sys.argv[1]
        ga.select(np.random.default_rng(0).standard_normal((8, 64, 16)), fraction=0.25, random_state=0)
        import numba
        layer = numba.threading_layer()  # started by the parent's parallel kernels, before any fork
        want = [work(i) for i in range(4)]
        if kind == "pool":
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
                got = list(pool.map(work, range(4)))
                seen = list(pool.map(probe, range(2)))
            fallback = layer == "omp"
            assert all(s == (("array_api", "BackendUnavailableError") if fallback else ("numba", None)) for s in seen), seen
        else:
            import torch
            from torch.utils.data import DataLoader, Dataset

            class Batches(Dataset):
                def __len__(self):
                    return 4

                def __getitem__(self, i):
                    return work(i)

            loader = DataLoader(Batches(), batch_size=None, num_workers=2, multiprocessing_context="fork")
            got = [tuple(np.asarray(t) for t in item) for item in loader]
        for w, g in zip(want, got, strict=True):
            for a, b in zip(w, g, strict=True):
                np.testing.assert_array_equal(a, b)
        print("layer", layer)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("layer", ["default", "omp"])
@pytest.mark.parametrize("kind", ["pool", "dataloader"])
def test_fork_children_match_parent(tmp_path, kind, layer):
    if kind == "dataloader":
        pytest.importorskip("torch")
    script = tmp_path / "fork_case.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    env.pop("NUMBA_THREADING_LAYER_PRIORITY", None)
    if layer == "omp":
        env["NUMBA_THREADING_LAYER"] = "omp"
    out = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    if layer == "omp":
        assert "layer omp" in out.stdout
