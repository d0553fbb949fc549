"""Agreement with reference implementations the project did not write: every classification and
calibration metric against scikit-learn (and torchmetrics for the ECE), on random, tied, constant,
single-class and multi-label inputs; insertion/deletion against an independent RISE
implementation (`rise_reference.py`, after RISE's evaluation code).

Documented convention differences (each is asserted below, not skipped):

* undefined values: AUC of a class without positives or negatives is NaN in both (scikit-learn
  1.9 warns; older versions raise), but our macro AUC averages the defined classes where
  scikit-learn's is NaN; F1 with TP + FP + FN = 0 is NaN (scikit-learn's ``zero_division=np.nan``,
  not its default 0), skipped by the macro mean as scikit-learn does with that option;
* decisions: binary / multi-label decisions are ``score >= threshold`` (0.5), multi-class are the
  first argmax; scikit-learn takes decisions, so we feed it exactly those;
* balanced accuracy of binary / multi-label decisions is (TPR + TNR) / 2 per label (scikit-learn's
  binary balanced accuracy; it has none for multi-label, so each label is compared on its own);
* ECE bins are (b/M, (b+1)/M] (scikit-learn's `calibration_curve` bins, 0 in the first bin);
  torchmetrics' `*_calibration_error` bins are [b/M, (b+1)/M), so the two agree except for
  confidences exactly on an inner bin edge, which the tied inputs avoid for torchmetrics;
  multi-label ECE is the mean of the per-label binary ECEs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from conceptclip.metrics import (
    accuracy,
    auc,
    balanced_accuracy,
    confusion_matrix,
    deletion_auc,
    expected_calibration_error,
    f1_score,
    gaussian_blur,
    insertion_auc,
    reliability_bins,
)
from conceptclip.metrics.faithfulness import rise_kernel1d
from rise_reference import rise_blur, rise_curve, rise_kernel

TOL = 5e-8  # the bound for classification/calibration metrics
TABLE: dict[tuple[str, str], float] = {}  # (function, reference) -> max |difference|, printed by the last test


def _record(function: str, reference: str, ours, ref) -> None:
    a = np.atleast_1d(np.asarray(ours, dtype=np.float64))
    b = np.atleast_1d(np.asarray(ref, dtype=np.float64))
    assert a.shape == b.shape, (function, a.shape, b.shape)
    assert np.array_equal(np.isnan(a), np.isnan(b)), (function, a, b)
    diff = float(np.nanmax(np.abs(a - b))) if (~np.isnan(a)).any() else 0.0
    assert diff <= TOL, (function, reference, diff)
    key = (function, reference)
    TABLE[key] = max(TABLE.get(key, 0.0), diff)


def _sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _sk_auc(y_bin: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's AUC of one label; NaN where only one class is present (scikit-learn 1.9
    warns and returns NaN there, older versions raise)."""
    try:
        return float(_sk(skm.roc_auc_score, y_bin, s))
    except ValueError:
        return float("nan")


def _sk_macro_auc(per_label: list[float], macro_call) -> float:
    """Macro AUC: scikit-learn's own macro where every label is defined; where some are not,
    scikit-learn's macro is NaN (or raises) and ours is the mean over the defined labels, i.e. the
    nanmean of scikit-learn's per-label values."""
    if not np.isnan(per_label).any():
        return float(macro_call())
    try:
        assert math.isnan(_sk(macro_call))
    except ValueError:
        pass
    return float(np.nanmean(per_label)) if not np.isnan(per_label).all() else float("nan")


# ---------------------------------------------------------------- inputs
C = 4


def _multiclass(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 60
    if kind == "random":
        s = rng.random((n, C))
    elif kind == "tied":
        s = np.round(rng.random((n, C)), 1) + 0.05  # coarse values: many ties, never on a bin edge
    elif kind == "constant":
        s = np.full((n, C), 0.25)
    else:  # single-class: every target is class 2
        s = rng.random((n, C))
    s = s / s.sum(1, keepdims=True)
    y = np.full(n, 2) if kind == "single-class" else rng.integers(0, C, n)
    return s, y


def _binary(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 50
    s = {"random": rng.random(n), "tied": np.round(0.9 * rng.random(n), 1) + 0.05,
         "constant": np.full(n, 0.6), "single-class": rng.random(n)}[kind]
    y = np.ones(n, dtype=int) if kind == "single-class" else rng.integers(0, 2, n)
    return s, y


def _multilabel(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, k = 50, 3
    s = {"random": rng.random((n, k)), "tied": np.round(0.9 * rng.random((n, k)), 1) + 0.05,
         "constant": np.full((n, k), 0.4), "single-class": rng.random((n, k))}[kind]
    y = (rng.random((n, k)) < 0.4).astype(int)
    if kind == "single-class":
        y[:, 1] = 1  # label 1 always present, label 2 never
        y[:, 2] = 0
    return s, y


KINDS = ["random", "tied", "constant", "single-class"]


# ---------------------------------------------------------------- classification vs scikit-learn
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_match_sklearn(kind, seed):
    s, y = _multiclass(kind, seed)
    p = s.argmax(1)
    labels = list(range(C))
    _record("accuracy", "sklearn.accuracy_score", accuracy(s, y), skm.accuracy_score(y, p))
    _record("balanced_accuracy", "sklearn.balanced_accuracy_score",
            balanced_accuracy(s, y, num_classes=C), _sk(skm.balanced_accuracy_score, y, p))
    _record("f1_score (macro)", "sklearn.f1_score(macro, zero_division=nan)", f1_score(s, y),
            _sk(skm.f1_score, y, p, average="macro", labels=labels, zero_division=np.nan))
    _record("f1_score (none)", "sklearn.f1_score(None, zero_division=nan)", f1_score(s, y, average="none"),
            _sk(skm.f1_score, y, p, average=None, labels=labels, zero_division=np.nan))
    # integer label predictions give the same as the scores they came from
    _record("f1_score (macro)", "sklearn.f1_score(macro, zero_division=nan)", f1_score(p, y, num_classes=C),
            _sk(skm.f1_score, y, p, average="macro", labels=labels, zero_division=np.nan))
    assert np.array_equal(confusion_matrix(s, y).numpy(), skm.confusion_matrix(y, p, labels=labels))
    _record("confusion_matrix", "sklearn.confusion_matrix", confusion_matrix(s, y).numpy(),
            skm.confusion_matrix(y, p, labels=labels))
    # AUC one-vs-rest: NaN for a class without positives/negatives (scikit-learn raises there)
    per_class = [_sk_auc((y == c).astype(int), s[:, c]) for c in range(C)]
    _record("auc (none)", "sklearn.roc_auc_score per class", auc(s, y, average="none"), per_class)
    _record("auc (macro)", "sklearn.roc_auc_score(ovr, macro)", auc(s, y), _sk_macro_auc(
        per_class, lambda: skm.roc_auc_score(y, s, multi_class="ovr", average="macro", labels=labels)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_metrics_match_sklearn_for_every_dtype(kind, seed):
    s, y = _binary(kind, seed)
    p = (s >= 0.5).astype(int)
    for name, dec in (("float scores", s), ("int decisions", p), ("bool decisions", p.astype(bool)),
                      ("float decisions", p.astype(float))):
        _record("accuracy", "sklearn.accuracy_score", accuracy(dec, y), skm.accuracy_score(y, p))
        _record("balanced_accuracy", "sklearn.balanced_accuracy_score", balanced_accuracy(dec, y),
                _sk(skm.balanced_accuracy_score, y, p))
        ref_f1 = _sk(skm.f1_score, y, p, average="binary", zero_division=np.nan)
        _record("f1_score (binary)", "sklearn.f1_score(binary, zero_division=nan)", f1_score(dec, y), ref_f1)
        _record("confusion_matrix", "sklearn.confusion_matrix", confusion_matrix(dec, y).numpy(),
                skm.confusion_matrix(y, p, labels=[0, 1]))
    _record("auc (binary)", "sklearn.roc_auc_score", auc(s, y), _sk_auc(y, s))


def test_f1_hard_decisions_positive_class_whatever_the_dtype():
    # y = 1 0 1 1 0 1, p = 1 1 0 1 0 1 -> positive class TP 3, FP 1, FN 1 -> F1 = 6 / 8
    y = np.array([1, 0, 1, 1, 0, 1])
    p = np.array([1, 1, 0, 1, 0, 1])
    for dec in (p, p.astype(bool), p.astype(float), p.astype(np.int32), torch.as_tensor(p)):
        assert f1_score(dec, y) == pytest.approx(6 / 8)
    # all-zero decisions: TP 0, FN 4 -> 0 (scikit-learn gives 0 too), not a macro over both classes
    for dec in (np.zeros(6, dtype=int), np.zeros(6, dtype=bool), np.zeros(6)):
        assert f1_score(dec, y) == 0.0
    # with num_classes, integer 0/1 decisions are class labels: macro over classes 0 and 1
    # class 0: TP 1, FP 1, FN 1 -> 1/2 ; class 1: 3/4
    assert f1_score(p, y, num_classes=2) == pytest.approx((0.5 + 0.75) / 2)


@pytest.mark.parametrize("kind", KINDS)
def test_multilabel_metrics_match_sklearn(kind):
    s, y = _multilabel(kind, 3)
    p = (s >= 0.5).astype(int)
    _record("accuracy (subset)", "sklearn.accuracy_score", accuracy(s, y), skm.accuracy_score(y, p))
    _record("accuracy (label)", "1 - sklearn.hamming_loss", accuracy(s, y, multilabel="label"),
            1 - skm.hamming_loss(y, p))
    _record("f1_score (none)", "sklearn.f1_score(None, zero_division=nan)", f1_score(s, y, average="none"),
            _sk(skm.f1_score, y, p, average=None, zero_division=np.nan))
    _record("f1_score (macro)", "sklearn.f1_score(macro, zero_division=nan)", f1_score(s, y),
            _sk(skm.f1_score, y, p, average="macro", zero_division=np.nan))
    _record("confusion_matrix", "sklearn.multilabel_confusion_matrix", confusion_matrix(s, y).numpy(),
            skm.multilabel_confusion_matrix(y, p))
    per_label_ba = [_sk(skm.balanced_accuracy_score, y[:, j], p[:, j]) for j in range(y.shape[1])]
    # scikit-learn's balanced accuracy of a label with one class present is the recall of that class
    _record("balanced_accuracy (none)", "sklearn.balanced_accuracy_score per label",
            balanced_accuracy(s, y, average="none"), per_label_ba)
    per_label_auc = [_sk_auc(y[:, j], s[:, j]) for j in range(y.shape[1])]
    _record("auc (none)", "sklearn.roc_auc_score per label", auc(s, y, average="none"), per_label_auc)
    _record("auc (macro)", "sklearn.roc_auc_score(macro)", auc(s, y),
            _sk_macro_auc(per_label_auc, lambda: skm.roc_auc_score(y, s, average="macro")))


# ---------------------------------------------------------------- calibration
def _sk_ece(y_hit: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    """ECE from scikit-learn's uniform `calibration_curve` (bins (b/M, (b+1)/M]) and the bin counts
    of the same rule (`np.searchsorted` on the inner edges, as calibration_curve does)."""
    prob_true, prob_pred = calibration_curve(y_hit, conf, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)
    counts = counts[counts > 0]
    return float((counts * np.abs(prob_true - prob_pred)).sum() / len(conf))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_matches_sklearn_and_torchmetrics(kind, n_bins):
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    s, y = _multiclass(kind, 5)
    conf, hit = s.max(1), (s.argmax(1) == y).astype(int)
    ours = expected_calibration_error(s, y, n_bins=n_bins)
    if hit.min() != hit.max():  # calibration_curve needs both outcomes
        _record("expected_calibration_error (multi-class)", "sklearn.calibration_curve", ours,
                _sk_ece(hit, conf, n_bins))
    tm = multiclass_calibration_error(torch.as_tensor(s), torch.as_tensor(y), num_classes=C, n_bins=n_bins, norm="l1")
    _record("expected_calibration_error (multi-class)", "torchmetrics.multiclass_calibration_error", ours, float(tm))

    sb, yb = _binary(kind, 6)
    ours_b = expected_calibration_error(sb, yb, n_bins=n_bins)
    if yb.min() != yb.max():
        _record("expected_calibration_error (binary)", "sklearn.calibration_curve", ours_b, _sk_ece(yb, sb, n_bins))
    tmb = binary_calibration_error(torch.as_tensor(sb), torch.as_tensor(yb), n_bins=n_bins, norm="l1")
    _record("expected_calibration_error (binary)", "torchmetrics.binary_calibration_error", ours_b, float(tmb))

    sm, ym = _multilabel(kind, 7)
    per_label = [float(binary_calibration_error(torch.as_tensor(sm[:, j]), torch.as_tensor(ym[:, j]),
                                                n_bins=n_bins, norm="l1")) for j in range(ym.shape[1])]
    _record("expected_calibration_error (multi-label, none)", "torchmetrics.binary_calibration_error per label",
            expected_calibration_error(sm, ym, n_bins=n_bins, average="none"), per_label)
    _record("expected_calibration_error (multi-label, macro)", "mean of torchmetrics per label",
            expected_calibration_error(sm, ym, n_bins=n_bins), np.mean(per_label))


def test_reliability_bins_match_sklearn_calibration_curve():
    s, y = _binary("tied", 8)
    rb = reliability_bins(s, y, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    full = rb.count[0] > 0
    _record("reliability_bins.accuracy", "sklearn.calibration_curve prob_true", rb.accuracy[0][full].numpy(), prob_true)
    _record("reliability_bins.confidence", "sklearn.calibration_curve prob_pred", rb.confidence[0][full].numpy(),
            prob_pred)


def test_ece_bin_edge_convention_differs_from_torchmetrics_only_on_edges():
    # confidence exactly 0.5 with 10 bins: ours (0.4, 0.5] -> bin 4; torchmetrics [0.5, 0.6) -> bin 5.
    # One sample, correct: both give |1 - 0.5| = 0.5 (a single bin), so the difference only shows
    # with two samples split by the edge: 0.5 (wrong) and 0.55 (right).
    from torchmetrics.functional.classification import binary_calibration_error

    s, y = np.array([0.5, 0.55]), np.array([0, 1])
    # ours: bin (0.4, 0.5] {0.5: y 0} -> |0 - 0.5| / 2 ; bin (0.5, 0.6] {0.55: y 1} -> |1 - 0.55| / 2
    assert expected_calibration_error(s, y, n_bins=10) == pytest.approx((0.5 + 0.45) / 2)
    # torchmetrics: one bin [0.5, 0.6) holding both: acc 0.5, conf 0.525 -> 0.025
    assert float(binary_calibration_error(torch.tensor(s), torch.tensor(y), n_bins=10)) == pytest.approx(0.025)
    _record("expected_calibration_error (binary, on an edge)", "sklearn.calibration_curve",
            expected_calibration_error(s, y, n_bins=10), _sk_ece(y, s, 10))


# ---------------------------------------------------------------- insertion / deletion vs RISE
def test_rise_kernel_and_blur_match_scipy():
    for klen, sig in ((11, 5.0), (5, 5.0), (7, 1.5), (3, 1.0), (21, 2.0)):  # (5, 5): another repo's choice
        k1 = rise_kernel1d(klen, sig)
        _record("faithfulness.rise_kernel1d (outer)", "scipy gaussian_filter of an impulse (RISE gkern)",
                torch.outer(k1, k1).numpy(), rise_kernel(klen, sig))
    rng = np.random.default_rng(0)
    img = rng.random((3, 13, 17))
    _record("gaussian_blur (blur='rise')", "RISE conv2d(gkern, padding=5)",
            gaussian_blur(torch.as_tensor(img[None]))[0].numpy(), rise_blur(img))
    # zero padding darkens the borders: a constant image is not constant after RISE's blur
    const = gaussian_blur(torch.full((1, 1, 12, 12), 1.0, dtype=torch.float64))[0, 0]
    assert float(const[6, 6]) == pytest.approx(1.0) and float(const[0, 0]) < 0.5


def _tiny_cnn_prob():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(128, 3)).double()
    with torch.no_grad():
        for prm in net.parameters():
            prm.mul_(6)

    def prob(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x.double()).softmax(-1)[:, 0]

    return prob


@pytest.mark.parametrize("ties", ["random", "coarse"])
def test_insertion_deletion_match_rise(ties):
    prob = _tiny_cnn_prob()
    rng = np.random.default_rng(1)
    n, h, w = 4, 12, 16
    imgs = torch.nn.functional.avg_pool2d(torch.as_tensor(rng.random((n, 3, h, w))), 3, 1, 1).numpy()
    sal = rng.random((n, h, w))
    if ties == "coarse":
        sal = np.round(sal, 1)  # ~10 distinct values: the tie order decides most of the curve
    x, m = torch.as_tensor(imgs), torch.as_tensor(sal)
    for mode, fn, canvas in (("ins", insertion_auc, "blur"), ("del", deletion_auc, "zero"), ("del", deletion_auc, "blur")):
        res = fn(prob, x, m, canvas=canvas)  # defaults: RISE's blur, tie order and W pixels a step
        for i in range(n):
            sub = rise_blur(imgs[i]) if canvas == "blur" else np.zeros_like(imgs[i])
            scores, area = rise_curve(lambda t: float(prob(t)), imgs[i], sal[i], mode, w, sub)
            name = f"{fn.__name__} ({canvas} canvas)"
            _record(name + " curve", "RISE CausalMetric (step = W px)", res.scores[i].numpy(), scores)
            _record(name, "RISE CausalMetric + auc()", float(res.auc[i]), area)
    if ties == "coarse":  # ours, as named options, really differ from RISE on tied maps
        ours = insertion_auc(prob, x, m, blur="sampled", ties="raster").auc.numpy()
        ref = [rise_curve(lambda t: float(prob(t)), imgs[i], sal[i], "ins", w, rise_blur(imgs[i]))[1] for i in range(n)]
        assert np.abs(ours - np.array(ref)).max() > 1e-4


def test_zz_print_agreement_table(capsys):
    """Prints the agreement table (run with -s to see it); every row was asserted <= TOL above."""
    assert TABLE, "run with the other tests of this file"
    with capsys.disabled():
        print("\n| function | reference | max difference |\n|---|---|---|")
        for (fn, ref), d in sorted(TABLE.items()):
            print(f"| `{fn}` | {ref} | {d:.1e} |")
