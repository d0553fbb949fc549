"""Classification metrics against hand-worked examples and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from conceptclip.errors import ConfigError
from conceptclip.metrics import (
    accuracy,
    auc,
    balanced_accuracy,
    confusion_matrix,
    f1_score,
)
from conceptclip.metrics.classification import average_ranks

# Binary worked example: y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8]
Y_BIN = np.array([0, 0, 1, 1])
S_BIN = np.array([0.1, 0.4, 0.35, 0.8])

# Multi-class worked example (rows sum to 1, as scikit-learn's OvR AUC requires)
S_MC = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.3, 0.2]])
Y_MC = np.array([0, 1, 2, 2])

# Multi-class label decisions: y and predictions
Y_LAB = np.array([0, 0, 0, 1, 1, 2])
P_LAB = np.array([0, 0, 1, 1, 1, 0])

# Multi-label worked example
Y_ML = np.array([[1, 0], [0, 1], [1, 1]])
S_ML = np.array([[0.9, 0.2], [0.6, 0.7], [0.8, 0.1]])  # decisions at 0.5: [[1,0],[1,1],[1,0]]


# ---------------------------------------------------------------- AUC
def test_auc_binary_hand():
    # positive/negative pairs: (0.35>0.1) 1, (0.35<0.4) 0, (0.8>0.1) 1, (0.8>0.4) 1 -> 3/4
    assert auc(S_BIN, Y_BIN) == pytest.approx(0.75)
    assert auc(S_BIN, Y_BIN) == pytest.approx(skm.roc_auc_score(Y_BIN, S_BIN))


def test_auc_binary_ties_count_half():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9])
    # pos {0.5, 0.9} vs neg {0.5, 0.2}: (0.5=0.5) 1/2, (0.5>0.2) 1, (0.9>0.5) 1, (0.9>0.2) 1 -> 3.5/4
    assert auc(s, y) == pytest.approx(0.875)
    assert auc(torch.tensor(s, dtype=torch.float32), torch.tensor(y)) == pytest.approx(0.875)


def test_average_ranks_match_midranks():
    x = torch.tensor([[3.0], [1.0], [3.0], [2.0]])
    # sorted 1, 2, 3, 3 -> ranks 1, 2, 3.5, 3.5
    assert average_ranks(x)[:, 0].tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auc_multiclass_ovr_hand_and_sklearn():
    # class 0: pos {0.7} vs {0.2, 0.3, 0.5} -> 1
    # class 1: pos {0.5} vs {0.2, 0.3, 0.3} -> 1
    # class 2: pos {0.4, 0.2} vs {0.1, 0.3}: (0.4>0.1)(0.4>0.3)(0.2>0.1)(0.2<0.3) -> 3/4
    per = auc(S_MC, Y_MC, average="none")
    assert per.tolist() == pytest.approx([1.0, 1.0, 0.75])
    assert auc(S_MC, Y_MC) == pytest.approx(2.75 / 3)
    assert auc(S_MC, Y_MC) == pytest.approx(skm.roc_auc_score(Y_MC, S_MC, multi_class="ovr", average="macro"))


def test_auc_class_without_positives_is_nan_and_macro_skips_it():
    y = np.array([0, 1, 0, 1])  # class 2 never occurs
    # class 0: pos {0.7, 0.3} vs neg {0.2, 0.5}: (0.7>0.2)(0.7>0.5)(0.3>0.2)(0.3<0.5) -> 3/4
    # class 1: pos {0.5, 0.3} vs neg {0.2, 0.3}: 1 + 1 + 1 + 1/2 -> 3.5/4
    per = auc(S_MC, y, average="none")
    assert per[:2].tolist() == pytest.approx([0.75, 0.875])
    assert math.isnan(per[2])
    assert auc(S_MC, y) == pytest.approx((0.75 + 0.875) / 2)
    assert math.isnan(auc(S_BIN, np.zeros(4, dtype=int)))  # binary with one class only


def test_auc_multilabel_hand_and_sklearn():
    y = np.stack([Y_BIN, [0, 1, 0, 1]], axis=1)
    s = np.stack([S_BIN, [0.5, 0.5, 0.2, 0.9]], axis=1)
    per = auc(s, y, average="none")
    assert per.tolist() == pytest.approx([0.75, 0.875])  # the two worked examples above
    assert per.tolist() == pytest.approx(skm.roc_auc_score(y, s, average=None).tolist())
    assert auc(s, y) == pytest.approx(0.8125)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_random_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random((200, 5)), 1)  # coarse values: many ties
    s = s / s.sum(1, keepdims=True).clip(1e-9)
    y = rng.integers(0, 5, 200)
    ref = [skm.roc_auc_score(y == c, s[:, c]) for c in range(5)]
    assert auc(s, y, average="none").tolist() == pytest.approx(ref)
    ym = (rng.random((200, 4)) < 0.3).astype(int)
    sm = np.round(rng.random((200, 4)), 2)
    assert auc(sm, ym, average="none").tolist() == pytest.approx(skm.roc_auc_score(ym, sm, average=None).tolist())


# ---------------------------------------------------------------- accuracy
def test_accuracy_multiclass_and_binary_threshold():
    # argmax of S_MC rows: 0, 1, 2, 0 vs y 0, 1, 2, 2 -> 3/4
    assert accuracy(S_MC, Y_MC) == pytest.approx(0.75)
    # threshold 0.5: [0,0,0,1] vs [0,0,1,1] -> 3/4
    assert accuracy(S_BIN, Y_BIN) == pytest.approx(0.75)
    # threshold 0.35 with ">=": [0,1,1,1] -> 3/4 ; threshold 0.4: [0,1,0,1] -> 2/4
    assert accuracy(S_BIN, Y_BIN, threshold=0.35) == pytest.approx(0.75)
    assert accuracy(S_BIN, Y_BIN, threshold=0.4) == pytest.approx(0.5)
    # integer label predictions: [0,0,1,1,1,0] vs [0,0,0,1,1,2] -> 4/6
    assert accuracy(P_LAB, Y_LAB) == pytest.approx(4 / 6)


def test_accuracy_multilabel_subset_and_label():
    # decisions [[1,0],[1,1],[1,0]] vs [[1,0],[0,1],[1,1]]: only row 0 exact -> 1/3; 4 of 6 labels right -> 2/3
    assert accuracy(S_ML, Y_ML) == pytest.approx(1 / 3)
    assert accuracy(S_ML, Y_ML) == pytest.approx(skm.accuracy_score(Y_ML, S_ML >= 0.5))
    assert accuracy(S_ML, Y_ML, multilabel="label") == pytest.approx(2 / 3)
    assert accuracy(S_ML, Y_ML, multilabel="label") == pytest.approx(1 - skm.hamming_loss(Y_ML, S_ML >= 0.5))


# ---------------------------------------------------------------- balanced accuracy
def test_balanced_accuracy_multiclass_hand():
    # recall: class 0 2/3, class 1 2/2, class 2 0/1 -> (2/3 + 1 + 0) / 3 = 5/9
    assert balanced_accuracy(P_LAB, Y_LAB) == pytest.approx(5 / 9)
    assert balanced_accuracy(P_LAB, Y_LAB) == pytest.approx(skm.balanced_accuracy_score(Y_LAB, P_LAB))
    assert balanced_accuracy(P_LAB, Y_LAB, average="none").tolist() == pytest.approx([2 / 3, 1.0, 0.0])


def test_balanced_accuracy_binary_hand():
    # threshold 0.3: pred [0,1,1,1] vs y [0,0,1,1]: TPR 2/2, TNR 1/2 -> 0.75
    assert balanced_accuracy(S_BIN, Y_BIN, threshold=0.3) == pytest.approx(0.75)
    assert balanced_accuracy(S_BIN, Y_BIN, threshold=0.3) == pytest.approx(
        skm.balanced_accuracy_score(Y_BIN, S_BIN >= 0.3)
    )
    # all positives: TNR undefined -> TPR alone; at 0.5 pred [0,0,0,1] -> 1/4
    assert balanced_accuracy(S_BIN, np.ones(4, dtype=int)) == pytest.approx(0.25)


# ---------------------------------------------------------------- F1
def test_f1_multiclass_hand_and_sklearn():
    # class 0: TP 2, FP 1, FN 1 -> 4/6; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 0, FP 0, FN 1 -> 0
    per = f1_score(P_LAB, Y_LAB, average="none")
    assert per.tolist() == pytest.approx([2 / 3, 0.8, 0.0])
    assert f1_score(P_LAB, Y_LAB) == pytest.approx(22 / 45)
    assert f1_score(P_LAB, Y_LAB) == pytest.approx(skm.f1_score(Y_LAB, P_LAB, average="macro"))


def test_f1_class_never_seen_is_nan():
    per = f1_score(P_LAB, Y_LAB, average="none", num_classes=4)  # class 3: TP+FP+FN = 0
    assert per[:3].tolist() == pytest.approx([2 / 3, 0.8, 0.0]) and math.isnan(per[3])
    ref = skm.f1_score(Y_LAB, P_LAB, labels=[0, 1, 2, 3], average=None, zero_division=np.nan)
    assert np.isnan(ref[3]) and per[:3].tolist() == pytest.approx(ref[:3].tolist())
    assert f1_score(P_LAB, Y_LAB, num_classes=4) == pytest.approx(22 / 45)


def test_f1_binary_and_multilabel():
    # binary at 0.3: TP 2, FP 1, FN 0 -> 4/5 (positive class only)
    assert f1_score(S_BIN, Y_BIN, threshold=0.3) == pytest.approx(0.8)
    assert f1_score(S_BIN, Y_BIN, threshold=0.3) == pytest.approx(skm.f1_score(Y_BIN, S_BIN >= 0.3))
    # multi-label: label 0 TP 2 FP 1 FN 0 -> 4/5; label 1 TP 1 FP 0 FN 1 -> 2/3; macro 11/15
    assert f1_score(S_ML, Y_ML, average="none").tolist() == pytest.approx([0.8, 2 / 3])
    assert f1_score(S_ML, Y_ML) == pytest.approx(11 / 15)
    assert f1_score(S_ML, Y_ML) == pytest.approx(skm.f1_score(Y_ML, S_ML >= 0.5, average="macro"))
    # a score equal to the threshold is positive: at 0.6, S_ML[1, 0] = 0.6 stays a (false) positive
    assert f1_score(S_ML, Y_ML, threshold=0.6, average="none").tolist() == pytest.approx([0.8, 2 / 3])


@pytest.mark.parametrize("seed", [3, 4])
def test_accuracy_f1_balanced_random_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    s = rng.random((300, 6))
    y = rng.integers(0, 6, 300)
    p = s.argmax(1)
    assert accuracy(s, y) == pytest.approx(skm.accuracy_score(y, p))
    assert f1_score(s, y) == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert balanced_accuracy(s, y) == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert torch.equal(confusion_matrix(s, y), torch.as_tensor(skm.confusion_matrix(y, p)))


# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_hand():
    # rows true, cols predicted: class 0 -> preds 0,0,1; class 1 -> 1,1; class 2 -> 0
    assert confusion_matrix(P_LAB, Y_LAB).tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    # binary at 0.3: pred [0,1,1,1] vs y [0,0,1,1] -> [[TN 1, FP 1], [FN 0, TP 2]]
    assert confusion_matrix(S_BIN, Y_BIN, threshold=0.3).tolist() == [[1, 1], [0, 2]]
    ml = confusion_matrix(S_ML, Y_ML)
    assert ml.tolist() == skm.multilabel_confusion_matrix(Y_ML, S_ML >= 0.5).tolist()


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: auc(np.zeros(4), np.zeros(5)), "targets"),
        (lambda: auc(np.zeros((4, 3)), np.zeros((4, 2))), "targets"),
        (lambda: auc(np.zeros((4, 3)), np.array([0, 1, 2, 3])), "targets"),
        (lambda: auc(np.array([0.1, np.nan]), np.array([0, 1])), "scores"),
        (lambda: auc(np.array([1, 0]), np.array([0, 1])), "scores"),
        (lambda: auc(np.zeros((2, 2)), np.array([[0, 2], [1, 0]])), "targets"),
        (lambda: f1_score(S_MC, Y_MC, average="micro"), "average"),
        (lambda: accuracy(np.zeros((2, 2, 2)), np.zeros(2)), "scores"),
        (lambda: auc("abc", Y_BIN), "scores"),
    ],
)
def test_bad_inputs_raise_config_error_naming_argument(call, word):
    with pytest.raises(ConfigError, match=word):
        call()
