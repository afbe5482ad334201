"""Train a small torch model with full data, GRAFT and the baseline selectors; time, accuracy, energy.

The shared machinery of ``graft-array demo`` and ``benchmarks/bench_training.py``.
Every method trains the same model (same initial weights for a given seed) with
the same optimiser, learning rate, batch size and number of epochs; only what
each epoch trains on differs:

* ``full``: every training sample, every epoch.
* ``graft``: the adapter's defaults, epoch mode
  (:class:`graft_array.adapters.torch.GraftEpochSampler`): every
  ``refresh_every`` epochs one selection pass over a random class-stratified
  candidate pool of twice the budget (a no-grad forward in batches and one
  :func:`graft_array.select` per ``batches_per_call`` batches, MaxVol on the
  per-sample last-layer gradients), then only the selected samples, weighted
  by :meth:`~graft_array.adapters.torch.GraftEpochSampler.loss_weights`.
* ``graft-emb``: the paper's choice, MaxVol on the embeddings, every sample a
  candidate.
* ``graft-batch``: the paper's per-batch mode
  (:class:`graft_array.adapters.torch.GraftBatchSelector`): each training batch
  is forwarded once without gradients, a subset selected, and the weighted update
  done on the subset.
* ``random``, ``craig``, ``gradmatch``: epoch mode over every sample, with
  ``select(..., strategy=...)`` (``random`` skips the forward pass: it needs no
  gradients).
* ``adacore``, ``mkdt`` (opt-in, ``FAMILY_METHODS``): epoch mode with
  ``strategy="adacore"`` (the sampler's running p(1 - p) as the Hessian
  diagonal) and ``strategy="mkdt"`` (the samples of highest training loss).
* ``crest``: :class:`graft_array.adapters.crest.CrestSampler`: coresets of random
  pools re-mixed into batches, re-selected when its quadratic model of the loss
  stops predicting it (its ``after_step`` hook after every step).

Equal budget: every selector trains on ``round(fraction * N)`` samples per epoch
(select's ``budget="call"``: GRAFT's gradient-aware sizes are spread inside that
budget; the baselines take ``round(fraction * n)`` of each selection batch).

The epoch modes take ``sampler_kwargs`` (passed to ``GraftEpochSampler``: e.g.
``pool_fraction``, ``class_balance``, ``exclude_learned``, ``strata``,
``warm_start_epochs``), so that variants of a selector can be compared
(``benchmarks/bench_ablation.py``). For conv nets the sampler's pass runs with
``channels_last=True`` unless ``sampler_kwargs`` says otherwise.

Wall time covers the whole training (selection passes included) and excludes the
test-set evaluation. Selection time covers everything the sampler does for the
selection: its passes (loading, forward, ``select``) and, with
``exclude_learned``, the recording of the training losses. Energy and CO2 come
from codecarbon's offline tracker when it is installed: estimates (this kind of
machine has no power sensors; codecarbon falls back on the CPU's TDP and its
load), never measurements.

Nothing here touches torch's or NumPy's global random state: model initialisation
runs under ``torch.random.fork_rng`` and every shuffle has its own generator.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "METHODS",
    "EPOCH_METHODS",
    "FAMILY_METHODS",
    "load_data",
    "make_model",
    "RunResult",
    "run_method",
    "run_grid",
    "warm_up",
    "summarise",
    "format_table",
    "plot_results",
    "energy_tracker",
]

METHODS = ("full", "graft", "graft-emb", "graft-batch", "random", "craig", "gradmatch", "crest", "adacore", "mkdt")
EPOCH_METHODS = ("graft", "graft-emb", "random", "craig", "gradmatch", "adacore", "mkdt")  # the GraftEpochSampler ones
#: family members that train a classifier (opt-in in the demo and the grids: --methods adacore mkdt); "mkdt" keeps
#: the samples of highest training loss (MKDT's initialisation rule applied to the training subset)
FAMILY_METHODS = ("adacore", "mkdt")


# --------------------------------------------------------------------------- data and models


def load_data(name, *, data_dir=None, split_seed=0):
    """``(X_train, y_train, X_test, y_test, description)``: float32 images (n, 1, h, w) in [0, 1], int64 labels.

    ``"digits"``: scikit-learn's bundled 8 x 8 digits (1797 images; no download),
    split 75 / 25 stratified by ``split_seed``. ``"fashion-mnist"``: the 60 000 /
    10 000 split from the IDX files (see :mod:`graft_array.datasets`).
    """
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        Xtr, Xte, ytr, yte = train_test_split(X, y.astype(np.int64), test_size=0.25, stratify=y,
                                              random_state=split_seed)
        return Xtr, ytr, Xte, yte, f"scikit-learn digits ({len(Xtr)} train / {len(Xte)} test, 8x8)"
    if name == "fashion-mnist":
        from .datasets import load_fashion_mnist

        Xtr, ytr = load_fashion_mnist("train", data_dir=data_dir)
        Xte, yte = load_fashion_mnist("test", data_dir=data_dir)
        return (Xtr.reshape(-1, 1, 28, 28), ytr, Xte.reshape(-1, 1, 28, 28), yte,
                f"Fashion-MNIST ({len(Xtr)} train / {len(Xte)} test, 28x28)")
    raise ValueError(f"load_data expects name 'digits' or 'fashion-mnist'; got {name!r}.")


def make_model(kind, image_shape, classes, *, seed, hidden=None):
    """A seeded torch model: ``"mlp"`` (flatten, hidden ReLU layer, linear) or ``"cnn"`` (two conv blocks).

    The initial weights depend on ``seed`` only; torch's global RNG is left as it was.
    """
    import torch
    from torch import nn

    c, h, w = image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "mlp":
            hidden = hidden or (256 if h * w > 100 else 128)
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        if kind == "cnn":
            hidden = hidden or 128
            return nn.Sequential(
                nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), hidden), nn.ReLU(), nn.Linear(hidden, classes),
            )
    raise ValueError(f"make_model expects kind 'mlp' or 'cnn'; got {kind!r}.")


# --------------------------------------------------------------------------- energy


class _NoTracker:
    available = False

    def start_task(self, name):
        pass

    def stop_task(self):
        return None

    def stop(self):
        pass


class _Tracker:
    """codecarbon's OfflineEmissionsTracker, one task per run (estimates, never measurements)."""

    available = True

    def __init__(self, country_iso_code):
        import inspect

        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        params = inspect.signature(OfflineEmissionsTracker.__init__).parameters
        from codecarbon.emissions_tracker import BaseEmissionsTracker

        params = dict(params, **inspect.signature(BaseEmissionsTracker.__init__).parameters)
        # nothing written anywhere: codecarbon 3 takes output_methods=[], older ones save_to_file=False
        quiet = dict(output_methods=[]) if "output_methods" in params else dict(save_to_file=False)
        self._t = OfflineEmissionsTracker(country_iso_code=country_iso_code, log_level="error", measure_power_secs=1,
                                          **quiet)
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._t.start()

    def start_task(self, name):
        self._t.start_task(name)

    def stop_task(self):
        d = self._t.stop_task()
        return float(d.energy_consumed), float(d.emissions)

    def stop(self):
        self._t.stop()


def energy_tracker(enabled=True, country_iso_code="USA"):
    """A tracker with ``start_task`` / ``stop_task -> (kWh, kg CO2) or None`` / ``stop``.

    codecarbon's offline tracker when ``enabled`` and installed, else a no-op one
    (``available`` tells which).
    """
    if not enabled:
        return _NoTracker()
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        return _NoTracker()
    return _Tracker(country_iso_code)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    method: str
    fraction: float  # 1.0 for full
    seed: int
    accuracy: float  # test accuracy after the last epoch
    wall_s: float  # training incl. selection, excl. evaluation
    selection_s: float  # of which selection (forward passes for selection + select)
    samples_trained: int  # sample-gradients computed for the updates, all epochs
    energy_kwh: float = math.nan
    co2_kg: float = math.nan
    extra: dict = field(default_factory=dict)


def _accuracy(model, X, y, batch=2048):
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(X[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(X)


class _IndexedTensors:
    """A map-style dataset over in-memory tensors whose items carry their index: ``(x, y, index)``.

    ``targets`` (torchvision's name) publishes the class labels, so that the sampler's pool is class-stratified.
    """

    def __init__(self, X, y):
        self.X, self.y = X, y

    @property
    def targets(self):
        return self.y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i], i

    def __getitems__(self, idx):
        """A whole batch by one tensor index (torch's DataLoader calls this when it exists)."""
        idx = torch_index(idx)
        return self.X[idx], self.y[idx], idx


def torch_index(idx):
    import torch

    return torch.as_tensor(idx, dtype=torch.int64)


def _as_batch(batch):
    """collate_fn for :class:`_IndexedTensors`: its ``__getitems__`` already returns the batch."""
    return batch


def _batches(order, batch_size):
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


def run_method(method, data, *, model="mlp", fraction=0.3, epochs=10, batch_size=128, lr=1e-3, seed=0,
               refresh_every=5, selection_batch=128, progress=False, tracker=None, select_kwargs=None,
               sampler_kwargs=None):
    """Train one model with ``method`` on ``data = (X_train, y_train, X_test, y_test)``; a :class:`RunResult`.

    The training batches are slices of in-memory tensors (no DataLoader), drawn in
    a fresh order each epoch by a generator seeded with ``seed``; the optimiser is
    Adam with learning rate ``lr``. ``select_kwargs`` go to
    :func:`graft_array.select` (through the selector or the sampler),
    ``sampler_kwargs`` to ``GraftEpochSampler`` (the epoch modes only, see
    ``EPOCH_METHODS``); ``extra`` of the result records the number of selection
    passes (``"passes"``; for ``graft-batch`` the per-batch selections).
    """
    import torch
    import torch.nn.functional as tF

    if method not in METHODS:
        raise ValueError(f"run_method expects method in {METHODS}; got {method!r}.")
    sampler_kwargs = dict(sampler_kwargs or {})
    if sampler_kwargs and method not in EPOCH_METHODS:
        raise ValueError(
            f"run_method passes 'sampler_kwargs' to GraftEpochSampler, which method {method!r} does not use "
            f"(epoch modes: {', '.join(EPOCH_METHODS)}). Got {sorted(sampler_kwargs)}."
        )
    Xtr, ytr, Xte, yte = (torch.as_tensor(a) for a in data[:4])
    n = len(Xtr)
    classes = int(max(int(ytr.max()), int(yte.max())) + 1)
    net = make_model(model, tuple(Xtr.shape[1:]), classes, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    kw = dict(select_kwargs or {})
    tracker = tracker or _NoTracker()
    tracker.start_task(f"{method}-{fraction}-{seed}")
    sel_s = 0.0
    trained = 0
    passes = 0
    t0 = time.perf_counter()
    if method == "full":
        for _ in range(epochs):
            for b in _batches(torch.randperm(n, generator=gen), batch_size):
                loss = tF.cross_entropy(net(Xtr[b]), ytr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                trained += len(b)
    elif method == "crest":
        from .adapters.crest import CrestSampler

        sampler = CrestSampler(_IndexedTensors(Xtr, ytr), net, fraction=fraction, batch_size=batch_size, seed=seed,
                               collate_fn=_as_batch,
                               **kw)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for b in _batches(torch.as_tensor(list(iter(sampler)), dtype=torch.int64), batch_size):
                per = tF.cross_entropy(net(Xtr[b]), ytr[b], reduction="none")
                loss = (sampler.loss_weights(b) * per).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sampler.after_step()  # the trigger's check, every check_interval steps
                trained += len(b)
        crest_stats = sampler.stats
    elif method == "graft-batch":
        from .adapters.torch import GraftBatchSelector

        selector = GraftBatchSelector(net, fraction=fraction, random_state=seed, **kw)
        for _ in range(epochs):
            for b in _batches(torch.randperm(n, generator=gen), batch_size):
                x, y = Xtr[b], ytr[b]
                ts = time.perf_counter()
                idx, w = selector(x, y)
                sel_s += time.perf_counter() - ts
                passes += 1
                per = tF.cross_entropy(net(x[idx]), y[idx], reduction="none")
                loss = (w * per).sum() / len(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                trained += len(idx)
    else:
        from .adapters.torch import GraftEpochSampler

        if method == "graft-emb":  # the paper's mode: MaxVol on the embeddings, every sample a candidate
            kw.update(features="embeddings", pool_fraction=None)
        elif method != "graft":  # the baselines (the sampler runs them over every sample, as their references do)
            kw["strategy"] = method
        if any(isinstance(m, torch.nn.Conv2d) for m in net.modules()):
            sampler_kwargs.setdefault("channels_last", True)  # bench_pass.py: the pass's forward ~1.2x faster
        sampler_kwargs.setdefault("refresh_every", refresh_every)  # a variant may set its own
        sampler = GraftEpochSampler(_IndexedTensors(Xtr, ytr), net, fraction=fraction, batch_size=selection_batch,
                                    seed=seed, progress=progress, collate_fn=_as_batch,
                                    **sampler_kwargs, **kw)
        record = sampler.exclude_learned  # the loss history wants the training losses too
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            ts = time.perf_counter()
            order = sampler.indices  # runs the selection pass (or refresh_tau's check) when this epoch needs one
            sel_s += time.perf_counter() - ts
            order = order[torch.randperm(len(order), generator=gen)]
            for b in _batches(order, batch_size):
                per = tF.cross_entropy(net(Xtr[b]), ytr[b], reduction="none")
                loss = (sampler.loss_weights(b) * per).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                trained += len(b)
                if record:
                    ts = time.perf_counter()
                    sampler.record_losses(b, per.detach())
                    sel_s += time.perf_counter() - ts
    wall = time.perf_counter() - t0
    if method == "crest":
        sel_s, passes = crest_stats["select_seconds"] + crest_stats["check_seconds"], crest_stats["rounds"]
    elif method in EPOCH_METHODS:
        passes = sampler.stats["passes"]
    energy = tracker.stop_task()
    acc = _accuracy(net, Xte, yte)
    kwh, co2 = energy if energy is not None else (math.nan, math.nan)
    return RunResult(method, 1.0 if method == "full" else float(fraction), int(seed), acc, wall, sel_s, trained,
                     kwh, co2, dict(passes=int(passes)))


def warm_up(data, methods, *, rows=512, fraction=0.3, **run_kwargs):
    """One short untimed run of each method on the first ``rows`` training samples.

    Numba compiles the selection kernels on their first call (cached on disk
    afterwards) and torch allocates its buffers on its first steps; neither cost
    belongs to the method that happens to run first. A warm start in
    ``sampler_kwargs`` is left out here, so that the pass runs.
    """
    small = (data[0][:rows], data[1][:rows], data[2][:rows], data[3][:rows])
    kw = dict(run_kwargs, epochs=1, refresh_every=1)
    sk = {k: v for k, v in (kw.pop("sampler_kwargs", None) or {}).items() if k != "warm_start_epochs"}
    for method in methods:
        run_method(method, small, fraction=fraction, seed=0, sampler_kwargs=sk if method in EPOCH_METHODS else None,
                   **kw)


def run_grid(data, *, methods=METHODS, fractions=(0.1, 0.3), seeds=(0, 1, 2), progress=True, tracker=None,
             warmup=True, **run_kwargs):
    """Every method x fraction x seed (``full`` once per seed); a list of :class:`RunResult`.

    With ``warmup`` each method first runs once untimed on a small slice (:func:`warm_up`).
    ``run_kwargs`` go to :func:`run_method`; ``sampler_kwargs`` among them reach the epoch modes only.
    """
    from tqdm.auto import tqdm

    if warmup:
        warm_up(data, methods, fraction=min(fractions), **run_kwargs)
    jobs = []
    for seed in seeds:
        for method in methods:
            for f in ([1.0] if method == "full" else fractions):
                jobs.append((method, f, seed))
    out = []
    with tqdm(jobs, desc="training runs", unit="run", disable=not progress) as bar:
        for method, f, seed in bar:
            bar.set_postfix_str(f"{method} f={f:g} seed={seed}")
            kw = run_kwargs if method in EPOCH_METHODS else {k: v for k, v in run_kwargs.items()
                                                                if k != "sampler_kwargs"}
            out.append(run_method(method, data, fraction=f, seed=seed, tracker=tracker, **kw))
    return out


# --------------------------------------------------------------------------- reporting


def summarise(results):
    """Per (method, fraction) over seeds: accuracy mean and std, wall time median and ratio against ``full``.

    Wall times are summarised by their median over seeds (``wall_median``; the
    mean is kept as ``wall_mean``): one run slowed by a cold cache or a busy
    machine moves a mean of three timings a lot and the median little.
    ``wall_vs_full`` is the ratio of the medians and ``selection_share`` the
    median over seeds of each run's selection time over its wall time.
    """
    groups = {}
    for r in results:
        groups.setdefault((r.method, r.fraction), []).append(r)
    full = groups.get(("full", 1.0))
    full_wall = float(np.median([r.wall_s for r in full])) if full else math.nan
    full_acc = float(np.mean([r.accuracy for r in full])) if full else math.nan
    rows = []
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, f), rs in sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, kv[0][1], order[kv[0][0]])):
        acc = np.array([r.accuracy for r in rs])
        wall = np.array([r.wall_s for r in rs])
        sel = np.array([r.selection_s for r in rs])
        kwh = np.array([r.energy_kwh for r in rs])
        co2 = np.array([r.co2_kg for r in rs])
        rows.append(dict(
            method=method, fraction=f, seeds=len(rs),
            acc_mean=float(acc.mean()), acc_std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
            acc_vs_full=float(acc.mean() - full_acc),
            wall_mean=float(wall.mean()), wall_median=float(np.median(wall)),
            wall_vs_full=float(np.median(wall) / full_wall),
            selection_share=float(np.median(sel / wall)),
            energy_kwh=float(np.mean(kwh)), co2_kg=float(np.mean(co2)),
        ))
    return rows


def format_table(rows, *, markdown=False, energy=True):
    """The summary rows as a text (or Markdown) table."""
    head = ["method", "fraction", "test acc (mean +- std)", "vs full (points)", "wall time (median)", "vs full",
            "selection share"]
    if energy:
        head += ["energy (Wh, est.)", "CO2 (g, est.)"]
    table = []
    for r in rows:
        line = [r["method"], f"{r['fraction']:g}", f"{100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f}",
                f"{100 * r['acc_vs_full']:+.2f}", f"{r['wall_median']:.2f} s", f"{r['wall_vs_full']:.2f}x",
                f"{100 * r['selection_share']:.1f}%"]
        if energy:
            e, c = r["energy_kwh"], r["co2_kg"]
            line += ["-" if math.isnan(e) else f"{1000 * e:.3f}", "-" if math.isnan(c) else f"{1000 * c:.4f}"]
        table.append(line)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(t) + " |" for t in table]
        return "\n".join(out)
    wid = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, wid))]
    out += ["  ".join(c.ljust(w) for c, w in zip(t, wid)) for t in table]
    return "\n".join(out)


def plot_results(rows, path, *, title=""):
    """Test accuracy against wall time, one point per method and fraction (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(METHODS, "*oPsD^vXhp"))
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        xs = [r["wall_median"] for r in rs]
        ys = [100 * r["acc_mean"] for r in rs]
        es = [100 * r["acc_std"] for r in rs]
        ax.errorbar(xs, ys, yerr=es, fmt=markers[method] + ("" if method == "full" else "-"), label=method,
                    capsize=3, markersize=9 if method == "full" else 6)
        if method != "full":
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(f"{r['fraction']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("wall time per training run, selection included (s, median over seeds)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy against wall time (labels: fraction)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_as_dicts(results):
    return [asdict(r) for r in results]
