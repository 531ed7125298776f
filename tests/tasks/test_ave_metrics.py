"""AveMetrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch

from stgcma_fast.tasks.ave import AveMetrics


def _update(metrics: AveMetrics, labels: list[list[int]], pred: list[list[int]]) -> None:
    metrics.update({"pred": torch.tensor(pred), "labels": torch.tensor(labels)}, {})


def test_tiny_confusion_by_hand() -> None:
    m = AveMetrics(num_classes=3, class_names=["a", "b", "bg"])
    # 2 clips x 4 seconds. True: a a bg bg / b bg bg bg; predicted: a bg bg a / b b bg bg.
    _update(m, [[0, 0, 2, 2], [1, 2, 2, 2]], [[0, 2, 2, 0], [1, 1, 2, 2]])
    expected = torch.tensor([[1, 0, 1],   # a: 1 right, 1 -> bg
                             [0, 1, 0],   # b: right
                             [1, 1, 3]])  # bg: 3 right, 1 -> a, 1 -> b
    assert torch.equal(m.state()["confusion"], expected)
    out = m.compute()
    assert out["num_seconds"] == 8
    assert out["accuracy"] == pytest.approx(5 / 8)
    assert out["per_class_accuracy"] == pytest.approx([1 / 2, 1.0, 3 / 5])
    assert out["mean_class_accuracy"] == pytest.approx((1 / 2 + 1.0 + 3 / 5) / 3)
    assert out["majority_accuracy"] == pytest.approx(5 / 8)  # always "bg": 5 of 8 seconds
    assert out["confusion"] == expected.tolist()


def test_absent_class_is_none_and_left_out_of_the_mean() -> None:
    m = AveMetrics(num_classes=4)
    _update(m, [[0, 0, 0, 3]], [[0, 1, 0, 1]])  # classes 1 and 2 never occur as labels; 1 is predicted
    out = m.compute()
    assert out["per_class_accuracy"][1] is None and out["per_class_accuracy"][2] is None
    assert out["per_class_accuracy"][0] == pytest.approx(2 / 3)
    assert out["per_class_accuracy"][3] == pytest.approx(0.0)
    assert out["mean_class_accuracy"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert out["majority_accuracy"] == pytest.approx(3 / 4)
    assert out["accuracy"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("split", [1, 3, 5])
def test_states_of_two_halves_sum_to_the_whole(split: int) -> None:
    g = torch.Generator().manual_seed(split)
    labels = torch.randint(0, 29, (6, 10), generator=g)
    pred = torch.randint(0, 29, (6, 10), generator=g)
    whole, first, second = AveMetrics(), AveMetrics(), AveMetrics()
    whole.update({"pred": pred, "labels": labels}, {})
    first.update({"pred": pred[:split], "labels": labels[:split]}, {})
    second.update({"pred": pred[split:], "labels": labels[split:]}, {})
    summed = {k: first.state()[k] + second.state()[k] for k in whole.state()}
    assert summed["confusion"].dtype == torch.int64
    assert torch.equal(summed["confusion"], whole.state()["confusion"])
    reduced = AveMetrics()
    reduced.load_state(summed)
    assert reduced.compute() == whole.compute()
    assert whole.compute()["accuracy"] == pytest.approx(float((pred == labels).float().mean()))


def test_empty_metrics_give_nan_rates() -> None:
    out = AveMetrics().compute()
    assert out["num_seconds"] == 0 and math.isnan(out["accuracy"]) and math.isnan(out["majority_accuracy"])


def test_bad_inputs_name_the_values() -> None:
    m = AveMetrics(num_classes=3)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\), got values in \[0, 5\]"):
        _update(m, [[0, 5]], [[0, 1]])
    with pytest.raises(ValueError, match=r"one shape, got \(1, 2\) and \(1, 3\)"):
        m.update({"pred": torch.zeros(1, 2, dtype=torch.long), "labels": torch.zeros(1, 3, dtype=torch.long)}, {})
    with pytest.raises(ValueError, match=r"confusion state of shape \(3, 3\), got \(4, 4\)"):
        m.load_state({"confusion": torch.zeros(4, 4, dtype=torch.int64)})
    with pytest.raises(ValueError, match="num_classes to be an int >= 2, got 1"):
        AveMetrics(num_classes=1)


def test_confusion_png(tmp_path) -> None:
    m = AveMetrics()
    _update(m, [[0, 0, 28, 28, 5]], [[0, 28, 28, 5, 5]])
    files = m.save_artifacts(tmp_path, "test_")
    assert files == [tmp_path / "test_confusion.png"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))
    assert AveMetrics().save_artifacts(tmp_path / "empty", "x_") == []
