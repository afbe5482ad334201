import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

pytest.importorskip("sklearn")

from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import graft_array as ga
from graft_array.adapters.sklearn import GraftSampler, GraftSubsetEstimator

from conftest import readonly

# -- scikit-learn's own estimator checks ------------------------------------------------------------

_CHECKED = [
    GraftSampler(batch_size=32, random_state=0),
    GraftSubsetEstimator(LogisticRegression(), GraftSampler(batch_size=32, random_state=0)),
    GraftSubsetEstimator(Ridge(), GraftSampler(batch_size=32, random_state=0)),
]


@parametrize_with_checks(_CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- helpers ----------------------------------------------------------------------------------------


def _batches(a, batch_size):
    return [a[lo:lo + batch_size] for lo in range(0, len(a), batch_size)]


def _per_batch(values, sizes):
    return np.split(values, np.cumsum(sizes)[:-1])


def _classification(rng, n=300, d=12, classes=3):
    X, y = make_classification(n_samples=n, n_features=d, n_informative=min(6, d), n_redundant=0, n_classes=classes,
                               random_state=int(rng.integers(1000)))
    return X, y


def _check_selection(s, n, batch_size):
    """Attributes consistent: unique rows of X, per-batch ranges, weights >= 0 summing to each batch's rows."""
    idx, w = s.indices_, s.weights_
    assert idx.dtype == np.int64 and w.dtype == np.float64 and idx.shape == w.shape
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < n
    assert np.all(w >= 0)
    rows = np.diff(np.append(np.arange(0, n, batch_size), n))
    assert_array_equal(s.batch_rows_, rows)
    assert s.sizes_.sum() == len(idx) and np.all(s.sizes_ >= 1) and np.all(s.sizes_ <= rows)
    for wb, nb in zip(_per_batch(w, s.sizes_), rows):
        assert_allclose(wb.sum(), nb, rtol=1e-9)
    if s.permutation_ is None:
        for b, ib in enumerate(_per_batch(idx, s.sizes_)):
            assert np.all(ib // batch_size == b)


# -- GraftSampler -----------------------------------------------------------------------------------


def test_fit_sets_attributes_and_fit_resample_returns_selected_rows(rng):
    X, y = _classification(rng)
    s = GraftSampler(class_balance=False, batch_size=64, random_state=0)
    assert s.fit(X, y) is s
    _check_selection(s, len(X), 64)
    assert s.n_features_in_ == X.shape[1] and not hasattr(s, "feature_names_in_")
    assert s.backend_ == "numba" and s.solver_ in ("exact", "randomized") and s.rank_ >= 1
    assert s.gradient_source_ == "proxy" and s.residuals_.shape[0] == len(s.sizes_)
    X_res, y_res = GraftSampler(class_balance=False, batch_size=64, random_state=0).fit_resample(X, y)
    assert_array_equal(X_res, X[s.indices_])
    assert_array_equal(y_res, y[s.indices_])


def test_features_only_mode(rng):
    X = rng.standard_normal((250, 10))
    s = GraftSampler(fraction=0.2, batch_size=100).fit(X)
    _check_selection(s, 250, 100)
    assert s.gradient_source_ == "none" and s.proxy_ is None
    assert_array_equal(s.sizes_, [20, 20, 10])
    assert_allclose(s.weights_, np.repeat([5.0, 5.0, 5.0], s.sizes_))
    ref = ga.select(_batches(X, 100), fraction=0.2, return_info=True)
    assert_array_equal(s.indices_, ref.indices)
    X_res, y_res = GraftSampler(fraction=0.2, batch_size=100).fit_resample(X)
    assert_array_equal(X_res, X[s.indices_]) and y_res is None


def test_classification_proxy_is_the_logistic_last_layer_gradient(rng):
    X, y = _classification(rng, n=330, classes=4)
    s = GraftSampler(class_balance=False, batch_size=100, tol=0.3, solver="randomized", random_state=3).fit(X, y)
    assert isinstance(s.proxy_[-1], LogisticRegression) and isinstance(s.proxy_[0], StandardScaler)
    E = s.proxy_.predict_proba(X) - (y[:, None] == s.proxy_.classes_[None, :])
    Z = s.proxy_[:-1].transform(X)
    assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    g = ga.LastLayerGrads(_batches(E, 100), _batches(Z, 100))
    ref = ga.select(_batches(X, 100), g, tol=0.3, solver="randomized", random_state=3, return_info=True)
    assert_array_equal(s.indices_, ref.indices)
    assert_allclose(s.weights_, ref.weights)
    assert_array_equal(s.sizes_, ref.sizes)
    assert_allclose(s.residuals_, ref.residuals)
    _check_selection(s, len(X), 100)


def test_binary_proxy_uses_one_logit_and_regression_uses_ridge(rng):
    X, y = _classification(rng, n=200, classes=2)
    s = GraftSampler(class_balance=False, batch_size=64, random_state=0).fit(X, y)
    e = s.proxy_.predict_proba(X)[:, 1] - (y == s.proxy_.classes_[1])
    g = ga.LastLayerGrads(_batches(e[:, None], 64), _batches(s.proxy_[:-1].transform(X), 64))
    assert_array_equal(s.indices_, ga.select(_batches(X, 64), g, random_state=0))

    Xr, yr = make_regression(n_samples=200, n_features=8, n_targets=2, random_state=0)
    s = GraftSampler(class_balance=False, batch_size=64, random_state=0).fit(Xr, yr)
    assert isinstance(s.proxy_[-1], Ridge)
    g = ga.LastLayerGrads(_batches(s.proxy_.predict(Xr) - yr, 64), _batches(s.proxy_[:-1].transform(Xr), 64))
    assert_array_equal(s.indices_, ga.select(_batches(Xr, 64), g, random_state=0))
    _check_selection(s, 200, 64)


def test_given_proxy_estimator_fitted_or_not(rng):
    X, y = _classification(rng, n=256)
    fitted = LogisticRegression(max_iter=1000).fit(X, y)
    s = GraftSampler(class_balance=False, batch_size=64, proxy=fitted, random_state=0).fit(X, y)
    assert s.proxy_ is fitted
    E = fitted.predict_proba(X) - (y[:, None] == fitted.classes_[None, :])
    ref = ga.select(_batches(X, 64), ga.LastLayerGrads(_batches(E, 64), _batches(X, 64)), random_state=0)
    assert_array_equal(s.indices_, ref)
    unfitted = LogisticRegression(max_iter=1000)
    s2 = GraftSampler(class_balance=False, batch_size=64, proxy=unfitted, random_state=0).fit(X, y)
    assert not hasattr(unfitted, "coef_") and s2.proxy_ is not unfitted
    assert_array_equal(s2.indices_, s.indices_)
    # a regressor proxy: residuals prediction - y
    Xr, yr = make_regression(n_samples=128, n_features=6, random_state=1)
    reg = Ridge().fit(Xr, yr)
    s3 = GraftSampler(class_balance=False, batch_size=64, proxy=reg, random_state=0).fit(Xr, yr)
    g = ga.LastLayerGrads(_batches((reg.predict(Xr) - yr)[:, None], 64), _batches(Xr, 64))
    assert_array_equal(s3.indices_, ga.select(_batches(Xr, 64), g, random_state=0))


def test_single_class_target_has_zero_proxy_gradient(rng):
    X = rng.standard_normal((128, 6))
    s = GraftSampler(batch_size=128, fraction=0.25, band=0.5).fit(X, np.ones(128, dtype=int))
    assert s.sizes_[0] == 32  # rho = 0 meets tol at once, and the call's budget round(fraction * n) is spent
    assert_allclose(s.weights_, 4.0)  # no gradient to fit: uniform n / m


def test_explicit_plain_and_last_layer_gradients_equal_select(rng):
    n, batch = 300, 128
    X, y = rng.standard_normal((n, 10)), rng.integers(0, 3, n)
    G = rng.standard_normal((n, 64))
    s = GraftSampler(class_balance=False, batch_size=batch, tol=0.4, solver="randomized", random_state=7).fit(X, y, sample_gradients=G)
    assert s.gradient_source_ == "sample_gradients" and s.proxy_ is None
    ref = ga.select(_batches(X, batch), _batches(G, batch), tol=0.4, solver="randomized", random_state=7,
                    return_info=True)
    assert_array_equal(s.indices_, ref.indices)
    assert_allclose(s.weights_, ref.weights)
    _check_selection(s, n, batch)

    E, H = rng.standard_normal((n, 5)), rng.standard_normal((n, 7))
    s = GraftSampler(class_balance=False, batch_size=batch, random_state=1).fit(X, sample_gradients=ga.LastLayerGrads(E, H))
    ref = ga.select(_batches(X, batch), ga.LastLayerGrads(_batches(E, batch), _batches(H, batch)), random_state=1,
                    return_info=True)
    assert_array_equal(s.indices_, ref.indices)
    assert_allclose(s.weights_, ref.weights)
    _check_selection(s, n, batch)
    with pytest.warns(ga.GradientRankWarning):  # few gradient columns: the core's warning passes through
        GraftSampler(class_balance=False, batch_size=batch).fit(X, sample_gradients=G[:, :3])


def test_shuffle_batches_a_seeded_permutation_and_returns_rows_of_x(rng):
    X, y = _classification(rng, n=300)
    E, H = rng.standard_normal((300, 3)), rng.standard_normal((300, 5))
    s = GraftSampler(class_balance=False, batch_size=64, shuffle=True, solver="randomized", random_state=11)
    s.fit(X, sample_gradients=ga.LastLayerGrads(E, H))
    r = np.random.default_rng(11)
    perm = r.permutation(300)
    assert_array_equal(s.permutation_, perm)
    ref = ga.select(_batches(X[perm], 64), ga.LastLayerGrads(_batches(E[perm], 64), _batches(H[perm], 64)),
                    solver="randomized", random_state=r, return_info=True)
    assert_array_equal(s.indices_, perm[ref.indices])
    _check_selection(s, 300, 64)
    X_res, y_res = clone(s).fit_resample(X, y, sample_gradients=ga.LastLayerGrads(E, H))
    assert_array_equal(X_res, X[s.indices_]) and assert_array_equal(y_res, y[s.indices_])


def test_deterministic_for_a_random_state_and_no_global_rng(rng):
    X, y = _classification(rng, n=400, d=40)
    kw = dict(batch_size=128, shuffle=True, solver="randomized", rank=8)
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    a = GraftSampler(random_state=5, **kw).fit(X, y)
    b = GraftSampler(random_state=5, **kw).fit(X, y)
    c = GraftSampler(random_state=6, **kw).fit(X, y)
    GraftSampler(random_state=None, **kw).fit(X, y)
    assert_array_equal(np.random.get_state()[1], state)
    assert_array_equal(a.indices_, b.indices_) and assert_allclose(a.weights_, b.weights_)
    assert not np.array_equal(a.indices_, c.indices_)
    d = GraftSampler(random_state=np.random.RandomState(1), **kw).fit(X, y)
    e = GraftSampler(random_state=np.random.RandomState(1), **kw).fit(X, y)
    assert_array_equal(d.indices_, e.indices_)


def test_inputs_are_never_modified(rng):
    X, y = _classification(rng, n=200)
    G = rng.standard_normal((200, 60))
    Xr, yr, Gr = readonly(X), readonly(y), readonly(G)
    s = GraftSampler(batch_size=64, shuffle=True, random_state=0).fit(Xr, yr)
    GraftSampler(batch_size=64, random_state=0).fit(Xr, sample_gradients=Gr)
    GraftSampler(batch_size=64, random_state=0).fit(Xr, sample_gradients=ga.LastLayerGrads(Gr[:, :3], Gr[:, 3:9]))
    GraftSubsetEstimator(LogisticRegression(max_iter=1000), GraftSampler(batch_size=64)).fit(Xr, yr)
    assert_array_equal(Xr, X) and assert_array_equal(yr, y) and assert_array_equal(Gr, G)
    X_res, _ = clone(s).fit_resample(Xr, yr)
    assert_array_equal(X_res, X[s.indices_])


def test_pandas_and_list_inputs(rng):
    pd = pytest.importorskip("pandas")
    X, y = _classification(rng, n=200, d=5)
    base = GraftSampler(class_balance=False, batch_size=64, random_state=0).fit(X, y)
    df = pd.DataFrame(X, columns=[f"f{j}" for j in range(5)], index=np.arange(200)[::-1])
    ser = pd.Series(y, index=df.index)
    s = GraftSampler(class_balance=False, batch_size=64, random_state=0)
    X_res, y_res = s.fit_resample(df, ser)
    assert_array_equal(s.indices_, base.indices_)
    assert_array_equal(s.feature_names_in_, df.columns)
    assert isinstance(X_res, pd.DataFrame) and isinstance(y_res, pd.Series)
    assert_array_equal(X_res.to_numpy(), X[s.indices_]) and assert_array_equal(y_res.to_numpy(), y[s.indices_])
    lst = GraftSampler(class_balance=False, batch_size=64, random_state=0).fit(X.tolist(), y.tolist())
    assert_array_equal(lst.indices_, base.indices_)
    f32 = GraftSampler(class_balance=False, batch_size=64, random_state=0).fit(X.astype(np.float32), y)
    _check_selection(f32, 200, 64)


@pytest.mark.parametrize(
    "params,exc,match",
    [
        (dict(fraction=0), ValueError, r"The 'fraction' parameter of GraftSampler must be a finite float > 0.0"),
        (dict(fraction=1.5), ValueError, r"'fraction' parameter of GraftSampler"),
        (dict(batch_size=0), ValueError, r"The 'batch_size' parameter of GraftSampler must be an int >= 1\. Got 0"),
        (dict(batch_size=2.5), TypeError, r"'batch_size' parameter of GraftSampler"),
        (dict(method="svd"), ValueError, r"'method' parameter of GraftSampler must be one of"),
        (dict(tol=-1), ValueError, r"'tol' parameter of GraftSampler"),
        (dict(rank=0), ValueError, r"'rank' parameter of GraftSampler"),
        (dict(solver="qr"), ValueError, r"'solver' parameter of GraftSampler"),
        (dict(min_size=200), ValueError,
         r"'min_size' parameter of GraftSampler must be an int in the range \[1, 128\]"),
        (dict(min_size=9, max_size=4), ValueError, r"'min_size' parameter of GraftSampler must be <= 'max_size'"),
        (dict(shuffle=1), TypeError, r"'shuffle' parameter of GraftSampler must be a bool"),
        (dict(proxy="svm"), ValueError, r"'proxy' parameter of GraftSampler"),
        (dict(random_state="seed"), TypeError, r"'random_state' parameter of GraftSampler"),
    ],
)
def test_bad_parameters_name_themselves(rng, params, exc, match):
    X, y = rng.standard_normal((50, 4)), rng.integers(0, 2, 50)
    with pytest.raises(exc, match=match):
        GraftSampler(**params).fit(X, y)


def test_bad_data_names_the_argument(rng):
    X, y = rng.standard_normal((50, 4)), rng.integers(0, 2, 50)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GraftSampler().fit(Xn, y)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GraftSampler().fit(Xn)
    with pytest.raises(ValueError, match=r"The 'y' parameter of GraftSampler.fit must have one target per row of "
                                         r"'X' \(50 rows\)\. Got shape \(49,\)"):
        GraftSampler().fit(X, y[:-1])
    with pytest.raises(ValueError, match="Input y contains NaN"):
        GraftSampler().fit(X, np.where(np.arange(50) == 2, np.nan, 1.0))
    with pytest.raises(ValueError, match=r"The 'sample_gradients' parameter of GraftSampler.fit must have one row "
                                         r"per row of 'X' \(50 rows\)\. Got 40 rows"):
        GraftSampler().fit(X, sample_gradients=rng.standard_normal((40, 60)))
    with pytest.raises(ValueError, match=r"'sample_gradients.embeddings' parameter of GraftSampler.fit must have one"):
        GraftSampler().fit(X, sample_gradients=ga.LastLayerGrads(np.ones((50, 2)), np.ones((49, 3))))
    with pytest.raises(ValueError, match="Input sample_gradients contains NaN"):
        GraftSampler().fit(X, sample_gradients=np.full((50, 60), np.nan))
    with pytest.raises(ValueError, match="Unknown label type: 'multilabel-indicator'"):
        GraftSampler().fit(X, rng.integers(0, 2, (50, 3)))
    with pytest.raises(ValueError, match="Unknown label type: 'continuous'"):
        GraftSampler(proxy="logistic").fit(X, rng.standard_normal(50))
    with pytest.raises(ValueError, match=r"proxy does not know the label\(s\) \[7\]"):
        GraftSampler(proxy=LogisticRegression().fit(X, y)).fit(X, np.where(np.arange(50) == 0, 7, y))
    with pytest.raises(TypeError, match="'sampler' parameter of GraftSubsetEstimator must be a GraftSampler"):
        GraftSubsetEstimator(Ridge(), sampler=Ridge()).fit(X, y)


# -- GraftSubsetEstimator ---------------------------------------------------------------------------


class _Recorder(ClassifierMixin, BaseEstimator):
    """Records what fit received; predicts the majority class."""

    def fit(self, X, y, sample_weight=None):
        self.X_, self.y_, self.sample_weight_ = np.asarray(X), np.asarray(y), sample_weight
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


class _RecorderNoWeight(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        self.X_, self.y_ = np.asarray(X), np.asarray(y)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def test_sample_weight_passed_only_when_supported(rng):
    X, y = _classification(rng, n=200)
    m = GraftSubsetEstimator(_Recorder(), GraftSampler(batch_size=64, random_state=0)).fit(X, y)
    idx = m.sampler_.indices_
    assert_array_equal(m.estimator_.X_, X[idx]) and assert_array_equal(m.estimator_.y_, y[idx])
    assert_allclose(m.estimator_.sample_weight_, m.sampler_.weights_)
    m2 = GraftSubsetEstimator(_RecorderNoWeight(), GraftSampler(batch_size=64, random_state=0)).fit(X, y)
    assert_array_equal(m2.estimator_.X_, X[idx])  # fit(X, y) with no sample_weight: it would raise otherwise


def test_delegation_clone_and_attributes(rng):
    X, y = _classification(rng, n=200)
    m = GraftSubsetEstimator(LogisticRegression(max_iter=1000))
    assert not hasattr(m, "classes_") and not hasattr(m, "n_features_in_")
    m.fit(X, y)
    assert isinstance(m.sampler_, GraftSampler) and m.sampler is None
    assert_array_equal(m.classes_, np.unique(y)) and m.n_features_in_ == X.shape[1]
    assert_array_equal(m.predict(X), m.estimator_.predict(X))
    assert_allclose(m.predict_proba(X), m.estimator_.predict_proba(X))
    assert_allclose(m.decision_function(X), m.estimator_.decision_function(X))
    assert m.score(X, y) == m.estimator_.score(X, y)
    c = clone(GraftSubsetEstimator(Ridge(alpha=2.0), GraftSampler(fraction=0.3)))
    assert c.get_params()["sampler__fraction"] == 0.3 and c.get_params()["estimator__alpha"] == 2.0
    r = GraftSubsetEstimator(Ridge())
    assert hasattr(r, "predict") and not hasattr(r, "predict_proba") and not hasattr(r, "decision_function")


def test_pipeline_and_grid_search_on_digits():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    pipe = make_pipeline(
        StandardScaler(),
        GraftSubsetEstimator(LogisticRegression(max_iter=2000), GraftSampler(fraction=0.25, random_state=0)),
    ).fit(Xtr, ytr)
    n_sel = len(pipe[-1].sampler_.indices_)
    assert n_sel < 0.5 * len(Xtr)
    assert pipe.score(Xte, yte) > 0.85  # chance: 0.1

    grid = GridSearchCV(
        Pipeline([("scale", StandardScaler()),
                  ("graft", GraftSubsetEstimator(LogisticRegression(max_iter=2000), GraftSampler(random_state=0)))]),
        {"graft__sampler__fraction": [0.1, 0.3]},
        cv=2,
    ).fit(Xtr[:800], ytr[:800])
    assert grid.best_params_["graft__sampler__fraction"] in (0.1, 0.3)
    assert grid.best_score_ > 0.75 and grid.score(Xte, yte) > 0.75
    fracs = [grid.cv_results_["param_graft__sampler__fraction"][i] for i in range(2)]
    assert sorted(fracs) == [0.1, 0.3]


def test_sampler_in_an_imblearn_pipeline():
    imblearn_pipeline = pytest.importorskip("imblearn.pipeline")
    X, y = load_digits(return_X_y=True)
    pipe = imblearn_pipeline.make_pipeline(
        StandardScaler(), GraftSampler(random_state=0), LogisticRegression(max_iter=2000)
    ).fit(X[:1200], y[:1200])
    assert len(pipe[1].indices_) < 600
    assert pipe.score(X[1200:], y[1200:]) > 0.85


def test_regression_subset_scores_well():
    X, y = make_regression(n_samples=600, n_features=10, noise=1.0, random_state=0)
    m = GraftSubsetEstimator(Ridge(alpha=1e-3), GraftSampler(fraction=0.2, random_state=0)).fit(X[:450], y[:450])
    assert m.sampler_.gradient_source_ == "proxy"
    assert m.score(X[450:], y[450:]) > 0.95


# -- class balance and the budget -------------------------------------------------------------------


def test_class_balance_auto_keeps_every_class_with_its_share(rng):
    X = rng.standard_normal((600, 8))
    y = np.where(rng.random(600) < 0.02, 9, rng.integers(0, 3, 600))  # class 9: about a dozen rows
    s = GraftSampler(fraction=0.05, batch_size=64, random_state=0).fit(X, y)
    k = round(0.05 * 600)
    counts = {c: int((y[s.indices_] == c).sum()) for c in np.unique(y)}
    for c, got in counts.items():
        n_c = int((y == c).sum())
        assert got == min(n_c, max(1, -(-k * n_c // 600))), (c, got)
    assert set(np.asarray(s.batch_labels_).tolist()) == set(np.unique(y).tolist())
    assert len(s.sizes_) == len(s.batch_labels_)
    on = GraftSampler(fraction=0.05, batch_size=64, random_state=0, class_balance=True).fit(X, y)
    assert_array_equal(on.indices_, s.indices_)
    plain = GraftSampler(fraction=0.05, batch_size=64, random_state=0).fit(X)  # no y: no classes
    assert plain.batch_labels_ is None
    assert len(set(y[plain.indices_])) < len(counts)  # without classes the rare one is missed here


def test_class_balance_string_labels_and_regression(rng):
    X = rng.standard_normal((200, 5))
    y = np.array(["cat", "dog", "emu", "fox"])[rng.integers(0, 4, 200)]
    s = GraftSampler(fraction=0.02, batch_size=50, random_state=0).fit(X, y)
    assert set(y[s.indices_]) == set(y)
    assert set(s.batch_labels_) == set(y)
    r = GraftSampler(fraction=0.1, batch_size=50, random_state=0).fit(X, rng.standard_normal(200))
    assert r.batch_labels_ is None  # a continuous target has no classes
    with pytest.raises(ValueError, match=r"class_balance=True needs a binary or multiclass 'y'. Got 'continuous'"):
        GraftSampler(class_balance=True).fit(X, rng.standard_normal(200))
    with pytest.raises(ValueError, match=r"class_balance=True needs a binary or multiclass 'y'. Got no y"):
        GraftSampler(class_balance=True).fit(X)
    with pytest.raises(ValueError, match=r"The 'class_balance' parameter of GraftSampler must be 'auto', True or "
                                         r"False. Got 'yes' instead."):
        GraftSampler(class_balance="yes").fit(X, y)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_budget_call_selects_round_fraction_n(rng, fraction):
    X = rng.standard_normal((500, 6))
    y = rng.integers(0, 3, 500)
    s = GraftSampler(fraction=fraction, batch_size=64, class_balance=False, tol=0.2, random_state=0).fit(X, y)
    assert len(s.indices_) == round(fraction * 500)
    b = GraftSampler(fraction=fraction, batch_size=64, class_balance=False, tol=0.2, random_state=0,
                     budget="batch").fit(X, y)
    lo, hi = int(np.floor(0.5 * fraction * 64)), int(np.ceil(1.5 * fraction * 64))
    assert all(min(lo, n) <= m <= hi for m, n in zip(b.sizes_, b.batch_rows_))
    with pytest.raises(ValueError, match=r"The 'budget' parameter of GraftSampler must be 'call', 'batch' or an "
                                         r"int >= 0. Got 'epoch' instead."):
        GraftSampler(budget="epoch").fit(X, y)


def test_subset_classifier_sees_every_class_on_tiny_data(rng):
    """The former expected failure of check_fit2d_1feature: 10 rows, 3 classes, a quarter kept."""
    X = rng.standard_normal((10, 1))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    est = GraftSubsetEstimator(LogisticRegression(), GraftSampler(batch_size=32, random_state=0)).fit(X, y)
    assert_array_equal(est.classes_, [0, 1, 2])
    assert set(y[est.sampler_.indices_]) == {0, 1, 2}
