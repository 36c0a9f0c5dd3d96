"""ConfusionMatrix against torchmetrics and a brute-force count, plus input checks and distributed merging."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from rgbd_seg_ros.metrics import ConfusionMatrix

IGNORE = 255


def random_batches(seed: int, k: int, n: int = 4, shape=(2, 24, 32), used: int | None = None, ignore_frac=0.15):
    """Batches of (pred, target) with ``ignore_frac`` ignore pixels; classes drawn from ``0..used-1``."""
    rng = np.random.default_rng(seed)
    used = k if used is None else used
    out = []
    for _ in range(n):
        target = rng.integers(0, used, size=shape)
        # correlated predictions: right 60 % of the time, so IoUs are spread out
        pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, used, size=shape))
        target[rng.random(shape) < ignore_frac] = IGNORE
        out.append((pred.astype(np.int64), target.astype(np.int64)))
    return out


def torchmetrics_reference(batches, k: int) -> dict[str, np.ndarray | float]:
    """torchmetrics' results (a pip-only test dependency: skipped where it is missing, e.g. under colcon test)."""
    pytest.importorskip("torchmetrics", reason="torchmetrics (pip-only, the [test] extra) is not installed")
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

    metrics = {
        "matrix": MulticlassConfusionMatrix(k, ignore_index=IGNORE),
        "miou": MulticlassJaccardIndex(k, average="macro", ignore_index=IGNORE),
        "iou": MulticlassJaccardIndex(k, average="none", ignore_index=IGNORE),
        "pixel_accuracy": MulticlassAccuracy(k, average="micro", ignore_index=IGNORE),
        "mean_accuracy": MulticlassAccuracy(k, average="macro", ignore_index=IGNORE),
    }
    for pred, target in batches:
        for m in metrics.values():
            m.update(torch.from_numpy(pred), torch.from_numpy(target))
    return {name: m.compute().numpy() for name, m in metrics.items()}


@pytest.mark.parametrize("seed", range(3))
def test_matches_torchmetrics_on_random_data_with_ignore(seed: int) -> None:
    k = 7
    batches = random_batches(seed, k)
    cm = ConfusionMatrix(k, ignore_index=IGNORE)
    for pred, target in batches:
        cm.update(pred, target)
    ref = torchmetrics_reference(batches, k)
    np.testing.assert_array_equal(cm.matrix, ref["matrix"])  # rows = target, columns = prediction
    assert cm.miou() == pytest.approx(float(ref["miou"]), abs=1e-6)
    np.testing.assert_allclose(cm.per_class_iou(), ref["iou"], atol=1e-6)
    assert cm.pixel_accuracy() == pytest.approx(float(ref["pixel_accuracy"]), abs=1e-6)
    assert cm.mean_accuracy() == pytest.approx(float(ref["mean_accuracy"]), abs=1e-6)  # every class labelled
    assert cm.total == sum(int((t != IGNORE).sum()) for _, t in batches)


def test_absent_classes_are_excluded_from_the_mean_like_torchmetrics() -> None:
    k = 10
    batches = random_batches(3, k, used=6)  # classes 6..9 never occur
    pred, target = batches[0]
    pred[0, 0, 0], target[0, 0, 0] = 8, 2  # class 8 predicted once, never labelled: IoU 0, counted
    cm = ConfusionMatrix(k)
    for p, t in batches:
        cm.update(p, t)
    iou = cm.per_class_iou()
    assert np.isnan(iou[[6, 7, 9]]).all() and iou[8] == 0.0
    assert cm.miou() == pytest.approx(float(torchmetrics_reference(batches, k)["miou"]), abs=1e-6)
    assert cm.miou() == pytest.approx(np.mean(iou[[0, 1, 2, 3, 4, 5, 8]]))
    assert cm.miou(absent="zero") == pytest.approx(np.nansum(iou) / k)
    assert np.isnan(cm.per_class_accuracy()[8])  # never labelled → not in mean accuracy
    with pytest.raises(ValueError):
        cm.miou(absent="skip")


def test_matches_a_brute_force_count() -> None:
    k = 4
    rng = np.random.default_rng(5)
    pred = rng.integers(0, k, size=(3, 5, 6))
    target = rng.integers(0, k, size=(3, 5, 6))
    target[rng.random(target.shape) < 0.2] = IGNORE
    target[target == 3] = IGNORE  # class 3 labelled nowhere …
    pred[pred == 3] = 0  # … and predicted nowhere: absent
    tp, fp, fn = [0] * k, [0] * k, [0] * k
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t == IGNORE:
            continue
        if p == t:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    ious = [tp[c] / (tp[c] + fp[c] + fn[c]) for c in range(k) if tp[c] + fp[c] + fn[c]]
    accs = [tp[c] / (tp[c] + fn[c]) for c in range(k) if tp[c] + fn[c]]
    cm = ConfusionMatrix(k).update(pred, target)
    assert len(ious) == 3
    assert cm.miou() == pytest.approx(sum(ious) / len(ious))
    assert cm.pixel_accuracy() == pytest.approx(sum(tp) / (sum(tp) + sum(fn)))
    assert cm.mean_accuracy() == pytest.approx(sum(accs) / len(accs))
    assert cm.per_class_iou()[:3] == pytest.approx([tp[c] / (tp[c] + fp[c] + fn[c]) for c in range(3)])


def test_tensors_dtypes_and_shapes_agree() -> None:
    (pred, target), *_ = random_batches(7, 5)
    reference = ConfusionMatrix(5).update(pred, target).matrix
    variants = [
        (torch.from_numpy(pred), torch.from_numpy(target)),
        (pred.astype(np.uint8), target.astype(np.uint8)),
        (torch.from_numpy(pred.astype(np.uint8)), torch.from_numpy(target).to(torch.int32)),
        (pred.reshape(-1), target.reshape(-1)),
    ]
    for p, t in variants:
        np.testing.assert_array_equal(ConfusionMatrix(5).update(p, t).matrix, reference)


def test_bad_input_is_reported_clearly() -> None:
    cm = ConfusionMatrix(5)
    ok = np.zeros((2, 3), np.int64)
    with pytest.raises(TypeError, match="argmax"):
        cm.update(np.zeros((2, 3), np.float32), ok)
    with pytest.raises(ValueError, match="shape"):
        cm.update(ok, np.zeros((3, 2), np.int64))
    for bad in (5, 254, -1):
        with pytest.raises(ValueError, match="target"):
            cm.update(ok, np.full((2, 3), bad))
        with pytest.raises(ValueError, match="pred"):
            cm.update(np.full((2, 3), bad), ok)
    with pytest.raises(ValueError, match="pred"):
        cm.update(np.full((2, 3), IGNORE), ok)  # "no prediction" at a labelled pixel
    assert cm.total == 0  # failed updates count nothing
    cm.update(np.full((2, 3), 99), np.full((2, 3), IGNORE))  # predictions at ignored pixels are not read
    assert cm.total == 0
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(5, ignore_index=3)


def test_no_ignore_index() -> None:
    cm = ConfusionMatrix(3, ignore_index=None)
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert cm.total == 4
    with pytest.raises(ValueError):
        cm.update(np.array([0]), np.array([255]))


def test_empty_and_reset() -> None:
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy()) and math.isnan(cm.mean_accuracy())
    assert math.isnan(cm.miou(absent="zero"))
    cm.update(np.array([1]), np.array([1]))
    assert cm.miou() == 1.0
    cm.reset()
    assert cm.total == 0


def test_merge_equals_one_pass() -> None:
    batches = random_batches(11, 6, n=6)
    whole = ConfusionMatrix(6)
    parts = [ConfusionMatrix(6), ConfusionMatrix(6)]
    for n, (p, t) in enumerate(batches):
        whole.update(p, t)
        parts[n % 2].update(p, t)
    np.testing.assert_array_equal(parts[0].merge(parts[1]).matrix, whole.matrix)
    with pytest.raises(ValueError, match="merge"):
        whole.merge(ConfusionMatrix(7))
    with pytest.raises(ValueError, match="merge"):
        whole.merge(ConfusionMatrix(6, ignore_index=None))


def test_as_dict_is_strict_json() -> None:
    cm = ConfusionMatrix(3).update(np.array([0, 1, 1]), np.array([0, 1, 0]))  # class 2 absent
    d = cm.as_dict(class_names=["a", "b", "c"])
    json.dumps(d, allow_nan=False)
    assert d["per_class_iou"][2] is None and d["miou"] == pytest.approx(100 * cm.miou()) and d["unit"] == "percent"
    assert d["confusion_matrix"] == cm.matrix.tolist()
    assert d["num_pixels"] == 3 and d["class_names"] == ["a", "b", "c"]
    assert set(d) >= {"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou"}
    with pytest.raises(ValueError):
        cm.as_dict(class_names=["a"])


def test_all_reduce_without_a_process_group_is_a_no_op() -> None:
    assert not dist.is_initialized()
    cm = ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 2]))
    before = cm.matrix.copy()
    np.testing.assert_array_equal(cm.all_reduce().matrix, before)


def test_all_reduce_sums_the_ranks_matrices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in process group of two ranks (the other rank's counts are added by ``all_reduce``); a real
    multi-process gloo run costs tens of seconds on the CI machine for the same code path."""
    other = ConfusionMatrix(4).update(*random_batches(21, 4, n=1)[0])
    calls = []

    def fake_all_reduce(tensor: torch.Tensor, op=None) -> None:
        calls.append((tensor.device.type, op))
        tensor += torch.from_numpy(other.matrix)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    mine = ConfusionMatrix(4).update(*random_batches(20, 4, n=1)[0])
    expected = mine.matrix + other.matrix
    np.testing.assert_array_equal(mine.all_reduce().matrix, expected)
    assert calls == [("cpu", dist.ReduceOp.SUM)]
