"""scikit-learn adapter: GRAFT as a sampler and as a subset-training meta-estimator.

* :class:`GraftSampler` selects rows of a dataset batch by batch with
  :func:`graft_array.select` (``fit`` sets ``indices_`` / ``weights_``;
  ``fit_resample`` returns the selected rows, the imbalanced-learn sampler
  convention, so it can stand in an ``imblearn.pipeline.Pipeline``).
* :class:`GraftSubsetEstimator` fits a clone of any estimator on the rows a
  :class:`GraftSampler` picks, with the GRAFT weights as ``sample_weight`` where
  the estimator's ``fit`` takes one; it works with ``clone``, ``Pipeline`` and
  ``GridSearchCV`` (e.g. a grid over ``sampler__fraction``).

This module imports scikit-learn (1.6 or newer); ``import graft_array`` never does.
"""

import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
    from sklearn.dummy import DummyClassifier
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
    from sklearn.exceptions import NotFittedError
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils import get_tags
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import check_array, check_is_fitted, has_fit_parameter, validate_data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "graft_array.adapters.sklearn needs scikit-learn 1.6 or newer: pip install 'graft-array[sklearn]' "
        f"(import failed: {exc})."
    ) from exc

from .._common import METHODS, STRATEGIES
from .._select import SOLVERS, LastLayerGrads, select
from .._validation import check_bool, check_int, check_option, check_random_state, check_real

__all__ = ["GraftSampler", "GraftSubsetEstimator"]

_BACKENDS = ("auto", "numba", "array_api", "cuda")
_PROXIES = ("logistic", "ridge")
_CLASSIFICATION = ("binary", "multiclass")
_REGRESSION = ("continuous", "continuous-multioutput")


def _generator(random_state, owner):
    """A numpy Generator from sklearn-style ``random_state`` (None, int, RandomState, Generator); no global RNG."""
    return check_random_state(random_state, "random_state", owner, legacy=True)


def _rows_of(data, idx):
    """Rows ``idx`` of ``data``: pandas objects stay pandas (positional rows), everything else becomes an array."""
    if hasattr(data, "iloc"):
        return data.iloc[idx]
    return np.asarray(data)[idx]


class GraftSampler(BaseEstimator):
    """GRAFT data-subset selection as a scikit-learn sampler.

    The rows of ``X`` are cut into consecutive batches of ``batch_size`` (in row
    order, or in a seeded random order with ``shuffle=True``; the last batch may
    be shorter) and every batch is selected independently by
    :func:`graft_array.select`: diverse rows by MaxVol on the batch's features;
    with gradients, the subset size is the smallest one in the band whose
    gradients reproduce the batch gradient within ``tol``, and the weights are
    a non-negative least-squares fit of the batch gradient held to sum to the
    batch's size (see :func:`graft_array.select`). All batches go through one ``select`` call.

    Gradients, in order of precedence:

    1. ``fit(X, y, sample_gradients=G)``: ``G`` is an array-like (n_samples, p)
       of per-sample gradients, or :class:`graft_array.LastLayerGrads` of two
       array-likes (residuals (n_samples, C), embeddings (n_samples, h)).
    2. ``fit(X, y)``: a **gradient proxy**, the per-sample gradient of the last
       (linear) layer of a model of ``y`` given ``X``, in factorised form
       ``LastLayerGrads(residuals, embeddings)``:

       * ``proxy=None`` (default): ``"logistic"`` when ``y`` is a binary or
         multiclass target, ``"ridge"`` when it is continuous.
       * ``"logistic"``: a ``StandardScaler`` + ``LogisticRegression`` fitted on
         (X, y); residuals are ``predict_proba - onehot(y)`` (the cross-entropy
         gradient with respect to the logits; one column ``p_1 - y_1`` for a binary
         target, the sigmoid model's logit), embeddings are the standardized ``X``
         (the linear model's input). The fit stops after 200 L-BFGS iterations
         and its convergence warnings are silenced: an approximate proxy is
         enough. A target with a single class has zero residuals (every row
         predicted exactly), so the smallest size of the band is taken, with
         uniform weights.
       * ``"ridge"``: a ``StandardScaler`` + ``Ridge`` fitted on (X, y);
         residuals are ``prediction - y`` (the squared-error gradient; one column
         per target), embeddings the standardized ``X``.
       * an estimator with ``predict_proba`` (classifier) or ``predict``
         (regressor): used as it is when fitted, else a clone is fitted on
         (X, y). Residuals as above from its outputs on ``X`` (classes aligned
         with its ``classes_``), embeddings ``X`` itself: the exact last-layer
         gradient when the estimator is a linear model of ``X``, a proxy
         otherwise.
    3. ``fit(X)``: features only, ``round(fraction * n_b)`` rows per batch with
       uniform weights ``n_b / m``.

    Parameters
    ----------
    strategy : str, default="graft"
        Selection rule of :func:`graft_array.select`: GRAFT, or a baseline with
        the same API (uniform random rows, CRAIG's facility location,
        GradMatch's OMP fit of the batch gradient, CREST, and the family:
        "adacore", "colm", "sas", "mkdt", "pdd", whose row-aligned inputs go
        to :meth:`fit`; "clipcov" selects image-caption pairs and is refused). The baselines take exactly
        ``round(fraction * n_b)`` rows per batch; "craig" and "gradmatch" need
        gradients (``y`` for the proxy, or ``sample_gradients``). ``rank``,
        ``method``, ``tol``, ``band``, ``weight_reg``, ``min_size``,
        ``max_size`` and ``solver`` apply to "graft" only (``min_size`` /
        ``max_size`` with a baseline raise ValueError).
    fraction : float in (0, 1], default=0.25
        The budget: ``round(fraction * n_samples)`` rows in all with
        ``budget="call"`` (each class ``ceil(k n_c / n)`` with class balance);
        also the centre of each batch's size band.
    rank : int or None, default=None
        Singular directions per batch; default ``round(fraction * batch)``.
    method : {"deim", "volume", "tournament"}, default="deim"
        MaxVol pivoting rule.
    tol : float in [0, 1], default=0.1
        Gradient residual tolerance of the size criterion.
    band : float in [0, 1), default=0.5
        Relative width of the size band around ``fraction * n_b``.
    weight_reg : float >= 0, default=0.01
        Pull of the weights towards uniform (see :func:`graft_array.select`).
    gradmatch_lambda : float >= 0, default=0.5
        Ridge of GradMatch's weight fit, relative to the batch's mean squared
        gradient norm (``strategy="gradmatch"`` only).
    min_size, max_size : int or None, default=None
        Override the band's ends (in ``[1, batch_size]``; capped by each batch's rows).
    solver : {"auto", "exact", "randomized"}, default="auto"
        Low-rank solver of :func:`graft_array.select`.
    batch_size : int, default=128
        Rows per GRAFT batch.
    proxy : None, "logistic", "ridge" or an estimator, default=None
        Gradient proxy used when ``y`` is given without ``sample_gradients``
        (see above).
    shuffle : bool, default=False
        Permute the rows (seeded by ``random_state``) before cutting batches;
        ``indices_`` are still rows of the caller's ``X``.
    backend : {"auto", "numba", "array_api", "cuda"}, default="auto"
        Backend of :func:`graft_array.select`.
    class_balance : {"auto", True, False}, default="auto"
        Class-balanced selection (select's ``labels``): each class of ``y``
        gets ``ceil(k n_c / n)`` of the k selected rows (at least one, so a
        classifier fitted on the subset sees every class), and the selection
        runs within each class. ``"auto"``: on when ``y`` is a binary or
        multiclass target, off otherwise (and without ``y``); ``True`` requires
        such a ``y``.
    budget : {"call", "batch"} or int, default="call"
        select's ``budget``: ``"call"`` selects ``round(fraction * n_samples)``
        rows in all, GRAFT's gradient-aware sizes spreading them over the
        batches; ``"batch"`` lets every batch's criterion pick its own size.
    strategy_params : None or dict, default=None
        select's ``strategy_params`` (the family's options, e.g. SAS's
        ``penalty``, CoLM's ``dims``).
    random_state : None, non-negative int, numpy RandomState or Generator, default=None
        Seeds the shuffle and the randomized low-rank solver (one
        ``numpy.random.Generator`` made from it: the permutation is drawn first,
        then :func:`graft_array.select` draws its seed). No global RNG is used;
        ``None`` gives fresh entropy.

    Attributes
    ----------
    indices_ : int64 ndarray (n_selected,)
        Selected rows of ``X``, batch after batch, each batch in selection order.
    weights_ : float64 ndarray (n_selected,)
        Non-negative weights aligned with ``indices_``; they sum to the batch's
        number of rows within each batch (``strategy="crest"``: mean 1 over the
        selection, see :func:`graft_array.select`).
    sizes_ : int64 ndarray (n_batches,)
        Rows selected in each batch (with class balance: in each class chunk,
        see ``batch_labels_``).
    batch_labels_ : ndarray (n_chunks,) or None
        With class balance, the class of each chunk the selection ran on (the
        order of ``sizes_`` and ``residuals_``); None otherwise.
    batch_rows_ : int64 ndarray (n_batches,)
        Rows in each batch (``batch_size``, the last one possibly fewer).
    residuals_ : float64 ndarray (n_batches, max_size)
        Each batch's gradient residual curve rho(m) along its selection order
        (NaN without gradients).
    backend_, solver_ : str
        What ran the selection and the low-rank solver ("none" for the baselines).
    rank_ : int
        Singular directions used (of the largest batches; 0 for the baselines).
    gradient_source_ : {"none", "proxy", "sample_gradients"}
        Where the gradients came from.
    proxy_ : estimator or None
        The fitted proxy model (``gradient_source_ == "proxy"``), else None.
    permutation_ : int64 ndarray (n_samples,) or None
        The row order batches were cut from (``shuffle=True``), else None.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` has string column names.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from graft_array.adapters.sklearn import GraftSampler
    >>> X, y = load_digits(return_X_y=True)
    >>> X_res, y_res = GraftSampler(fraction=0.2, random_state=0).fit_resample(X, y)
    """

    def __init__(
        self,
        fraction=0.25,
        rank=None,
        method="deim",
        tol=0.1,
        band=0.5,
        weight_reg=0.01,
        min_size=None,
        max_size=None,
        solver="auto",
        batch_size=128,
        proxy=None,
        shuffle=False,
        backend="auto",
        random_state=None,
        strategy="graft",
        gradmatch_lambda=0.5,
        class_balance="auto",
        budget="call",
        strategy_params=None,
    ):
        self.strategy_params = strategy_params
        self.class_balance = class_balance
        self.budget = budget
        self.strategy = strategy
        self.fraction = fraction
        self.rank = rank
        self.method = method
        self.tol = tol
        self.band = band
        self.weight_reg = weight_reg
        self.gradmatch_lambda = gradmatch_lambda
        self.min_size = min_size
        self.max_size = max_size
        self.solver = solver
        self.batch_size = batch_size
        self.proxy = proxy
        self.shuffle = shuffle
        self.backend = backend
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # -- checks ---------------------------------------------------------------------------------

    def _check_params(self):
        owner = type(self).__name__
        batch_size = check_int(self.batch_size, "batch_size", owner, low=1)
        opts = dict(
            strategy=check_option(self.strategy, "strategy", owner, STRATEGIES),
            fraction=check_real(self.fraction, "fraction", owner, low=0.0, high=1.0, low_inclusive=False),
            rank=check_int(self.rank, "rank", owner, low=1, allow_none=True),
            method=check_option(self.method, "method", owner, METHODS),
            tol=check_real(self.tol, "tol", owner, low=0.0, high=1.0),
            band=check_real(self.band, "band", owner, low=0.0, high=0.999),
            weight_reg=check_real(self.weight_reg, "weight_reg", owner, low=0.0),
            gradmatch_lambda=check_real(self.gradmatch_lambda, "gradmatch_lambda", owner, low=0.0),
            solver=check_option(self.solver, "solver", owner, SOLVERS),
            backend=check_option(self.backend, "backend", owner, _BACKENDS),
            strategy_params=self.strategy_params,
        )
        if opts["strategy"] == "clipcov":
            raise ValueError(
                f"{owner} selects rows of one matrix X; strategy='clipcov' selects image-caption pairs: call "
                "graft_array.select(features=(image_emb, text_emb), strategy='clipcov') or select_dataset on them."
            )
        if not (isinstance(self.class_balance, (bool, np.bool_)) or self.class_balance == "auto"):
            raise ValueError(
                f"The 'class_balance' parameter of {owner} must be 'auto', True or False. "
                f"Got {self.class_balance!r} instead."
            )
        budget = self.budget
        if isinstance(budget, (int, np.integer)) and not isinstance(budget, (bool, np.bool_)):
            opts["budget"] = check_int(budget, "budget", owner, low=0)
        elif isinstance(budget, str) and budget in ("call", "batch"):
            opts["budget"] = budget
        else:
            raise ValueError(
                f"The 'budget' parameter of {owner} must be 'call', 'batch' or an int >= 0. Got {budget!r} instead."
            )
        min_size = check_int(self.min_size, "min_size", owner, low=1, high=batch_size, allow_none=True)
        max_size = check_int(self.max_size, "max_size", owner, low=1, high=batch_size, allow_none=True)
        for nm, value in (("min_size", min_size), ("max_size", max_size)):
            if value is not None and opts["strategy"] != "graft":
                raise ValueError(
                    f"The '{nm}' parameter of {owner} applies to strategy='graft' only; strategy="
                    f"{opts['strategy']!r} takes round(fraction * n) rows per batch. Got {nm}={value!r} instead."
                )
        if min_size is not None and max_size is not None and min_size > max_size:
            raise ValueError(
                f"The 'min_size' parameter of {owner} must be <= 'max_size'. "
                f"Got min_size={min_size}, max_size={max_size} instead."
            )
        shuffle = check_bool(self.shuffle, "shuffle", owner)
        proxy = self.proxy
        if proxy is not None and not (isinstance(proxy, str) and proxy in _PROXIES):
            if isinstance(proxy, str) or not (hasattr(proxy, "predict_proba") or hasattr(proxy, "predict")):
                raise ValueError(
                    f"The 'proxy' parameter of {owner} must be None, 'logistic', 'ridge' or an estimator with "
                    f"predict_proba or predict. Got {proxy!r} instead."
                )
        return batch_size, opts, min_size, max_size, shuffle

    def _class_labels(self, y):
        """(codes (n,) int64, classes) of a classification ``y`` when class balance applies, else None."""
        owner = type(self).__name__
        if self.class_balance is False or self.class_balance is np.False_:
            return None
        target = None if y is None else type_of_target(y, input_name="y")
        if target not in _CLASSIFICATION:
            if self.class_balance == "auto":
                return None
            raise ValueError(
                f"{owner} with class_balance=True needs a binary or multiclass 'y'. Got "
                f"{'no y' if y is None else repr(target)} instead."
            )
        y1 = y.ravel() if y.ndim == 2 else y
        classes, codes = np.unique(y1, return_inverse=True)
        return codes.astype(np.int64), classes

    def _check_y(self, y, n):
        owner = type(self).__name__
        y = check_array(y, ensure_2d=False, dtype=None, ensure_all_finite=True, input_name="y", estimator=self)
        if y.ndim not in (1, 2) or y.shape[0] != n:
            raise ValueError(
                f"The 'y' parameter of {owner}.fit must have one target per row of 'X' ({n} rows). "
                f"Got shape {y.shape} instead."
            )
        return y

    def _check_gradients(self, sample_gradients, n):
        owner = type(self).__name__
        if isinstance(sample_gradients, LastLayerGrads):
            pairs = zip(sample_gradients, ("sample_gradients.residuals", "sample_gradients.embeddings"))
        else:
            pairs = [(sample_gradients, "sample_gradients")]
        parts = []
        for part, name in pairs:
            arr = check_array(part, dtype=[np.float64, np.float32], ensure_all_finite=True, input_name=name,
                              estimator=self)
            if arr.shape[0] != n:
                raise ValueError(
                    f"The '{name}' parameter of {owner}.fit must have one row per row of 'X' ({n} rows). "
                    f"Got {arr.shape[0]} rows instead."
                )
            parts.append(arr)
        return LastLayerGrads(*parts) if len(parts) == 2 else parts[0]

    # -- gradient proxy ---------------------------------------------------------------------------

    def _proxy_gradients(self, X_in, X, y):
        """LastLayerGrads(residuals, embeddings) of the proxy model, and the fitted proxy."""
        owner = type(self).__name__
        n = X.shape[0]
        proxy = self.proxy
        if proxy is None or isinstance(proxy, str):
            target = type_of_target(y, input_name="y")
            kind = proxy
            if kind is None:
                if target in _CLASSIFICATION:
                    kind = "logistic"
                elif target in _REGRESSION:
                    kind = "ridge"
                else:
                    raise ValueError(
                        f"{owner}'s default gradient proxy needs a binary, multiclass or continuous 'y'. Unknown "
                        f"label type: {target!r}. Pass sample_gradients, proxy='ridge' or a proxy estimator."
                    )
            if kind == "logistic":
                if target not in _CLASSIFICATION:
                    raise ValueError(
                        f"{owner} with proxy='logistic' needs a binary or multiclass 'y'. Unknown label type: "
                        f"{target!r}."
                    )
                y1 = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
                single = np.unique(y1).shape[0] < 2
                model = make_pipeline(
                    StandardScaler(),
                    DummyClassifier(strategy="prior") if single else LogisticRegression(max_iter=200),
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SklearnConvergenceWarning)
                    model.fit(X, y1)
                residuals = self._class_residuals(model.predict_proba(X), model.classes_, y1)
            else:
                try:
                    yf = np.asarray(y, dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{owner} with proxy='ridge' needs a numeric 'y'; got dtype {y.dtype}."
                    ) from None
                model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X, yf)
                residuals = (np.asarray(model.predict(X), dtype=np.float64) - yf).reshape(n, -1)
            embeddings = model[:-1].transform(X)
            return LastLayerGrads(residuals, np.asarray(embeddings, dtype=np.float64)), model

        try:
            check_is_fitted(proxy)
            model = proxy
        except NotFittedError:
            model = clone(proxy).fit(X_in, y)
        if hasattr(model, "predict_proba"):
            y1 = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
            if y1.ndim != 1:
                raise ValueError(f"{owner} with a classifier proxy needs a 1-D 'y'; got shape {y.shape}.")
            classes = getattr(model, "classes_", None)
            if classes is None:
                raise ValueError(f"{owner}'s proxy has predict_proba but no classes_; got {model!r}.")
            unseen = np.setdiff1d(np.unique(y1), classes)
            if unseen.size:
                raise ValueError(
                    f"{owner}'s proxy does not know the label(s) {unseen[:5].tolist()} of 'y'; its classes_ are "
                    f"{np.asarray(classes)[:10].tolist()}."
                )
            residuals = self._class_residuals(model.predict_proba(X_in), classes, y1)
        else:
            try:
                yf = np.asarray(y, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{owner} with a regressor proxy needs a numeric 'y'; got dtype {y.dtype}.") from None
            pred = np.asarray(model.predict(X_in), dtype=np.float64)
            residuals = (pred.reshape(yf.shape) - yf).reshape(n, -1)
        return LastLayerGrads(residuals, np.asarray(X, dtype=np.float64)), model

    @staticmethod
    def _class_residuals(proba, classes, y):
        """Cross-entropy gradient w.r.t. the logits: p - onehot(y); one column (p_1 - y_1) for two classes."""
        proba = np.asarray(proba, dtype=np.float64)
        onehot = (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(np.float64)
        e = proba - onehot
        return e[:, 1:] if e.shape[1] == 2 else e

    # -- fit -----------------------------------------------------------------------------------

    def fit(self, X, y=None, *, sample_gradients=None, groups=None, sources=None, scores=None, hessian_diag=None):
        """Select rows of ``X``.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            NumPy array, list of rows or pandas DataFrame; never modified.
        y : None or array-like (n_samples,) or (n_samples, n_targets)
            Targets for the gradient proxy (ignored when ``sample_gradients`` is given).
        sample_gradients : None, array-like (n_samples, p) or :class:`graft_array.LastLayerGrads`
            Per-sample gradients; overrides the proxy.
        groups, sources, scores : None or array-like (n_samples,)
            The family's row-aligned inputs of :func:`graft_array.select` (SAS's
            latent groups, CoLM's sources, MKDT's / PDD's scores). Without
            ``groups``, SAS runs within the classes of ``y`` under class
            balance, else within k-means groups.
        hessian_diag : None, "softmax" or array-like laid out like the gradients
            AdaCore's preconditioner; with a classifier proxy and none given,
            "softmax" (its p(1 - p)).

        Returns
        -------
        self
        """
        batch_size, opts, min_size, max_size, shuffle = self._check_params()
        rng = _generator(self.random_state, type(self).__name__)
        X_in = X
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_all_finite=True, reset=True)
        n = X.shape[0]
        yc = None if y is None else self._check_y(y, n)
        if sample_gradients is not None:
            grads, source, self.proxy_ = self._check_gradients(sample_gradients, n), "sample_gradients", None
        elif yc is not None:
            (grads, self.proxy_), source = self._proxy_gradients(X_in, X, yc), "proxy"
        else:
            grads, source, self.proxy_ = None, "none", None
        labels = self._class_labels(yc)
        from ..strategies import REGISTRY

        if not REGISTRY[opts["strategy"]].takes_grads:  # SAS, MKDT, PDD read the rows / the scores only
            grads = None
        extra = {}
        for nm, value in (("groups", groups), ("sources", sources), ("scores", scores)):
            if value is not None:
                arr = np.asarray(value)
                if arr.shape != (n,):
                    raise ValueError(f"The '{nm}' parameter of {type(self).__name__}.fit must have one entry per "
                                     f"row of 'X' ({n},). Got shape {arr.shape} instead.")
                extra[nm] = arr
        if extra.keys() & {"groups", "sources"}:
            labels = None  # they are the classes the selection runs in
        if hessian_diag is None and opts["strategy"] == "adacore" and source == "proxy" and self.proxy_ is not None \
                and hasattr(self.proxy_, "predict_proba"):
            hessian_diag = "softmax"
        if hessian_diag is not None:
            extra["hessian_diag"] = hessian_diag if isinstance(hessian_diag, str) else np.asarray(hessian_diag)

        perm = rng.permutation(n).astype(np.int64) if shuffle else None
        cuts = list(range(0, n, batch_size))

        def batches(a):
            if perm is not None:
                a = a[perm]
            return [a[lo:lo + batch_size] for lo in cuts]

        if grads is None:
            g = None
        elif isinstance(grads, LastLayerGrads):
            g = LastLayerGrads(batches(grads.residuals), batches(grads.embeddings))
        else:
            g = batches(grads)
        nmax = min(n, batch_size)
        sel = select(
            batches(X),
            g,
            min_size=None if min_size is None else min(min_size, nmax),
            max_size=None if max_size is None else min(max_size, nmax),
            labels=None if labels is None else batches(labels[0]),
            **{nm: v if isinstance(v, str) else batches(v) for nm, v in extra.items()},
            return_info=True,
            random_state=rng,
            **opts,
        )
        self.batch_labels_ = None if labels is None else labels[1][np.asarray(sel.batch_labels)]
        idx = np.asarray(sel.indices, dtype=np.int64)
        self.indices_ = perm[idx] if perm is not None else idx
        self.weights_ = np.asarray(sel.weights, dtype=np.float64)
        self.sizes_ = np.asarray(sel.sizes, dtype=np.int64)
        self.batch_rows_ = np.diff(np.append(cuts, n)).astype(np.int64)
        self.residuals_ = np.asarray(sel.residuals, dtype=np.float64)
        self.backend_ = sel.backend
        self.solver_ = sel.solver
        self.rank_ = int(sel.rank)
        self.gradient_source_ = source
        self.permutation_ = perm
        return self

    def fit_resample(self, X, y=None, *, sample_gradients=None):
        """Fit, then return the selected rows ``(X[indices_], y[indices_])`` (imbalanced-learn convention).

        pandas inputs stay pandas (positional rows); other inputs come back as
        NumPy arrays of the caller's values. ``y_res`` is None when ``y`` is.
        The weights are in ``weights_``.
        """
        self.fit(X, y, sample_gradients=sample_gradients)
        y_res = None if y is None else _rows_of(y, self.indices_)
        return _rows_of(X, self.indices_), y_res


def _estimator_has(attr):
    """For available_if: the fitted estimator_ (or, before fit, the estimator) has ``attr``."""

    def check(self):
        if hasattr(self, "estimator_"):
            getattr(self.estimator_, attr)
        else:
            getattr(self.estimator, attr)
        return True

    return check


class GraftSubsetEstimator(MetaEstimatorMixin, BaseEstimator):
    """Fit an estimator on the GRAFT-selected subset of the training data.

    ``fit(X, y)`` fits ``sampler`` (a :class:`GraftSampler`; a clone of it is
    stored as ``sampler_``), then a clone of ``estimator`` on the selected rows
    ``X[sampler_.indices_]``, ``y[sampler_.indices_]``, passing
    ``sample_weight=sampler_.weights_`` when the estimator's ``fit`` accepts a
    ``sample_weight`` argument (the weights sum to each batch's size, so the
    weighted subset loss estimates the full data's total loss and the
    regularisation strength keeps its meaning). ``predict``, ``predict_proba``,
    ``predict_log_proba``, ``decision_function`` and ``score`` are delegated to
    the fitted ``estimator_`` when it has them.

    Parameters
    ----------
    estimator : estimator
        The model to fit on the subset (cloned).
    sampler : GraftSampler or None, default=None
        The selection (cloned); None means ``GraftSampler()``. Its parameters can
        be searched as ``sampler__fraction`` etc. when it is given explicitly.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``.
    sampler_ : GraftSampler
        The fitted clone of ``sampler``.
    classes_ : ndarray
        ``estimator_.classes_`` (classifiers).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` has string column names.
    """

    def __init__(self, estimator, sampler=None):
        self.estimator = estimator
        self.sampler = sampler

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags.required = inner.target_tags.required
        tags.target_tags.multi_output = inner.target_tags.multi_output
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    def fit(self, X, y=None, *, sample_gradients=None):
        """Select rows with the sampler, then fit a clone of the estimator on them.

        ``sample_gradients`` goes to :meth:`GraftSampler.fit`.
        """
        sampler = self.sampler if self.sampler is not None else GraftSampler()
        if not isinstance(sampler, GraftSampler):
            raise TypeError(
                f"The 'sampler' parameter of {type(self).__name__} must be a GraftSampler or None. "
                f"Got {sampler!r} instead."
            )
        if y is None and get_tags(self.estimator).target_tags.required:
            raise ValueError(
                f"{type(self).__name__} with {type(self.estimator).__name__} requires y to be passed, but the "
                "target y is None."
            )
        self.sampler_ = clone(sampler).fit(X, y, sample_gradients=sample_gradients)
        idx = self.sampler_.indices_
        Xs = _rows_of(X, idx)
        args = (Xs,) if y is None else (Xs, _rows_of(y, idx))
        self.estimator_ = clone(self.estimator)
        if has_fit_parameter(self.estimator_, "sample_weight"):
            self.estimator_.fit(*args, sample_weight=self.sampler_.weights_)
        else:
            self.estimator_.fit(*args)
        return self

    @property
    def n_features_in_(self):
        if not hasattr(self, "sampler_"):
            raise AttributeError(f"{type(self).__name__} has no attribute 'n_features_in_' before fit.")
        return self.sampler_.n_features_in_

    @property
    def feature_names_in_(self):
        if not hasattr(self, "sampler_"):
            raise AttributeError(f"{type(self).__name__} has no attribute 'feature_names_in_' before fit.")
        return self.sampler_.feature_names_in_

    @property
    def classes_(self):
        if not hasattr(self, "estimator_"):
            raise AttributeError(f"{type(self).__name__} has no attribute 'classes_' before fit.")
        return self.estimator_.classes_

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        check_is_fitted(self)
        return self.estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        check_is_fitted(self)
        return self.estimator_.decision_function(X)

    @available_if(_estimator_has("score"))
    def score(self, X, y, **score_params):
        check_is_fitted(self)
        return self.estimator_.score(X, y, **score_params)
