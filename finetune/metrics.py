"""Classification metrics from a confusion matrix: accuracy, Matthews correlation (multi-class, Gorodkin 2004,
as in scikit-learn's ``matthews_corrcoef``), per-class and macro F1; the Wilson interval of an accuracy."""

from __future__ import annotations

import math

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of examples of class ``i`` predicted as ``j``."""
    c = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(c, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return c


def mcc(c: np.ndarray) -> float:
    """Matthews correlation coefficient of a confusion matrix (0 when it is undefined, as scikit-learn does)."""
    c = c.astype(np.float64)
    n, correct = c.sum(), np.trace(c)
    true_k, pred_k = c.sum(1), c.sum(0)
    cov_yp = correct * n - true_k @ pred_k
    cov_pp, cov_yy = n * n - pred_k @ pred_k, n * n - true_k @ true_k
    denom = math.sqrt(cov_pp * cov_yy)
    return float(cov_yp / denom) if denom > 0 else 0.0


def f1_per_class(c: np.ndarray) -> np.ndarray:
    """F1 of every class (0 for a class never true and never predicted)."""
    tp = np.diag(c).astype(np.float64)
    denom = c.sum(0) + c.sum(1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def classification_metrics(labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> dict:
    """``{"accuracy", "mcc", "f1_macro", "f1_<class>"...}`` of predictions against labels."""
    c = confusion(labels, preds, len(class_names))
    f1 = f1_per_class(c)
    out = {"accuracy": float(np.trace(c) / max(c.sum(), 1)), "mcc": mcc(c), "f1_macro": float(f1.mean())}
    out.update({f"f1_{name}": float(v) for name, v in zip(class_names, f1)})
    return out


def majority_accuracy(labels: np.ndarray, num_classes: int) -> float:
    """Accuracy of always predicting the most frequent class."""
    return float(np.bincount(labels, minlength=num_classes).max() / max(len(labels), 1))


def wilson(correct: float, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a binomial proportion ``correct / n``."""
    if n == 0:
        return [0.0, 1.0]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]
