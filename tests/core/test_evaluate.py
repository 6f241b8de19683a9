"""Evaluation metrics against scikit-learn and hand-worked cases; the CLI end to end."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from hyperct_core.evaluate import (
    DCA_THRESHOLDS,
    EvaluateError,
    bootstrap_auc,
    calibration,
    choose_threshold,
    evaluate_predictions,
    net_benefit,
    refer_all_benefit,
    roc_auc,
    roc_curve,
)
from hyperct_core.tasks import TASK_NAMES

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _scores(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    score = rng.normal(size=n) + separation * y
    return y, score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_scikit_learn_including_ties(seed: int) -> None:
    y, score = _scores(300, seed)
    assert roc_auc(y, score) == pytest.approx(sklearn_metrics.roc_auc_score(y, score), abs=1e-12)
    coarse = np.round(score, 0)  # many ties
    assert roc_auc(y, coarse) == pytest.approx(sklearn_metrics.roc_auc_score(y, coarse), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, coarse)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, coarse), abs=1e-12)
    assert math.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (60, 1000):
        y, score = _scores(n, seed=n)
        auc = roc_auc(y, score)
        low, high, used = bootstrap_auc(y, score, n=1000, seed=4)
        assert low <= auc <= high
        assert used >= 990
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]
    # Seeded: the same call gives the same interval.
    y, score = _scores(60, seed=60)
    assert bootstrap_auc(y, score, seed=4) == bootstrap_auc(y, score, seed=4)


def test_net_benefit_matches_a_hand_worked_case() -> None:
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    # pt = 0.3: refer 0.9, 0.4, 0.6 -> TP 2, FP 1 -> 2/5 - 1/5 * 0.3/0.7
    # pt = 0.5: refer 0.9, 0.6 -> TP 1, FP 1 -> 1/5 - 1/5 * 1 = 0
    nb = net_benefit(y, p, [0.3, 0.5])
    assert nb == pytest.approx([0.4 - 0.2 * 3 / 7, 0.0])
    # Refer all: prevalence 0.4 -> 0.4 - 0.6 * pt / (1 - pt)
    assert refer_all_benefit(y, [0.3, 0.5]) == pytest.approx([0.4 - 0.6 * 3 / 7, -0.2])


def test_threshold_rules() -> None:
    y, score = _scores(400, seed=9, separation=1.5)
    p = 1 / (1 + np.exp(-score))
    t = choose_threshold(y, p, "sensitivity", 0.9)
    assert ((p >= t) & y).sum() / y.sum() >= 0.9
    above = p[y][p[y] > t].min()  # the next higher threshold misses the target
    assert ((p >= above) & y).sum() / y.sum() < 0.9
    t_nb = choose_threshold(y, p, "net_benefit")
    gain = net_benefit(y, p, DCA_THRESHOLDS) - np.maximum(refer_all_benefit(y, DCA_THRESHOLDS), 0)
    assert t_nb in DCA_THRESHOLDS and gain[list(DCA_THRESHOLDS).index(t_nb)] == gain.max() > 0
    # Not the lowest threshold, where the net benefit alone peaks (prevalence 0.5).
    assert t_nb > DCA_THRESHOLDS[0]
    assert np.argmax(net_benefit(y, p, DCA_THRESHOLDS)) == 0
    with pytest.raises(EvaluateError, match="unknown threshold rule"):
        choose_threshold(y, p, "youden")


def test_calibration_of_calibrated_and_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p
    good = calibration(y, p)
    assert good["ece"] < 0.02 and abs(good["calibration_in_the_large"]) < 0.01
    assert good["brier"] == pytest.approx(np.mean((p - y) ** 2))
    bad = calibration(y, np.where(p > 0.5, 0.99, 0.01))
    assert bad["ece"] > 0.2
    assert sum(row["count"] for row in good["table"]) == 20000


def test_missing_labels_are_masked_and_groups_average_tasks() -> None:
    rng = np.random.default_rng(1)
    n = 200
    labels = np.full((n, len(TASK_NAMES)), np.nan)
    probs = rng.random((n, len(TASK_NAMES)))
    cardio, lvsd = (
        TASK_NAMES.index("cardiomegaly"),
        TASK_NAMES.index("reduced_lv_systolic_function"),
    )
    labels[:, cardio] = rng.random(n) < 0.4
    labels[: n // 2, lvsd] = rng.random(n // 2) < 0.4
    probs[:, cardio] = 0.7 * labels[:, cardio] + 0.3 * rng.random(n)
    result = evaluate_predictions(labels, probs, n_boot=200)
    assert set(result.tasks) == {"cardiomegaly", "reduced_lv_systolic_function"}
    assert result.tasks["reduced_lv_systolic_function"]["n"] == n // 2
    known = slice(0, n // 2)
    assert result.tasks["reduced_lv_systolic_function"]["auc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(labels[known, lvsd], probs[known, lvsd])
    )
    groups = result.groups
    assert groups["conventional"]["auc"] == pytest.approx(result.tasks["cardiomegaly"]["auc"])
    assert groups["all"]["auc"] == pytest.approx(np.mean([m["auc"] for m in result.tasks.values()]))
    assert groups["all"]["ci_low"] <= groups["all"]["auc"] <= groups["all"]["ci_high"]
    with pytest.raises(EvaluateError, match="no task has both"):
        evaluate_predictions(np.zeros((4, 25)), probs[:4], n_boot=10)


def test_evaluate_cli_writes_report_csv_and_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main
    from hyperct_core.checkpoint import load_checkpoint, make_card, save_checkpoint
    from hyperct_core.phantoms import write_phantom_dataset
    from hyperct_core.preprocess import PreprocessConfig
    from tests.core.tiny_models import IMG, tiny_model

    model = tiny_model(seed=2)
    pre = PreprocessConfig(volume_size=IMG + 6, crop_size=IMG)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, make_card(model, preprocessing=pre.to_dict()), ckpt)
    manifest = write_phantom_dataset(
        tmp_path / "data", 32, seed=1, fmt="npz", shape=(24, 48, 48), spacing=(12, 7, 7),
        splits=(("val", 0.5), ("test", 0.5)), prevalence=0.5,
        tasks=["cardiomegaly", "pleural_effusion"],
    )  # fmt: skip
    out = tmp_path / "eval"
    code = main(
        ["model", "evaluate", str(ckpt), str(manifest), "--out", str(out), "--bootstrap", "100",
         "--rule", "net_benefit", "--min-auc", "0", "--write-thresholds",
         str(tmp_path / "with_thr"), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    with (out / "metrics.csv").open() as f:
        rows = {r["task"]: r for r in csv.DictReader(f)}
    assert {"cardiomegaly", "pleural_effusion", "mean_all", "mean_conventional"} <= set(rows)
    low, auc, high = (float(rows["cardiomegaly"][k]) for k in ("ci_low", "auc", "ci_high"))
    assert low <= auc <= high
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 3 * 2 and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert "<script" not in html and "not validated" in html
    _, card = load_checkpoint(tmp_path / "with_thr")
    chosen = card.extra["operating_points"]
    assert chosen["rule"] == "net_benefit" and set(chosen["tasks"]) == {
        "cardiomegaly",
        "pleural_effusion",
    }
    assert (chosen["threshold_split"], chosen["held_out_split"]) == ("val", "test")
    # A random tiny model: whatever the val split decided, the card and CSV agree, and
    # only validated tasks have a threshold (the 0.5 placeholders are gone).
    for task in ("cardiomegaly", "pleural_effusion"):
        record = chosen["tasks"][task]
        assert record["validated"] == (rows[task]["validated"] == "1")
        if record["validated"]:
            assert card.thresholds[task] == pytest.approx(float(rows[task]["threshold"]))
        else:
            assert task not in card.thresholds and rows[task]["threshold"] == ""
    assert set(card.thresholds) <= {"cardiomegaly", "pleural_effusion"}
    assert card.validated is False
    # The drift reference: every task's scores over both splits; arrays carry no headers.
    reference = card.extra["reference_distributions"]
    assert set(reference["scores"]) == set(card.tasks) and reference["inputs"] == {}
    cardio = reference["scores"]["cardiomegaly"]
    assert cardio["n"] == 32 and sum(cardio["proportions"]) == pytest.approx(1.0)
    assert len(cardio["proportions"]) == len(cardio["edges"]) + 1
    assert reference["source"]["splits"] == ["test", "val"]
    assert main(["model", "info", str(tmp_path / "with_thr")]) == 0
    assert "drift reference: scores of 25 tasks; inputs: none recorded" in capsys.readouterr().out
    # Thresholds chosen on the split that is reported: refused in one line.
    assert main(
        ["model", "evaluate", str(ckpt), str(manifest), "--out", str(out), "--split", "val",
         "--threshold-split", "val", "--no-progress"]
    ) == 1  # fmt: skip


def test_evaluate_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from agent.cli import main

    bad = tmp_path / "m.csv"
    bad.write_text("path,patient_id,split,heart\nx.npy,P,test,1\n")
    assert main(["model", "evaluate", str(tmp_path), str(bad), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown column 'heart'" in err


def _split_pair(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Val and test splits of one informative task whose score scales differ.

    The val scores are squeezed towards 0.5 and the test scores are not, so any rule
    chosen on one split gives a different threshold on the other.
    """
    rng = np.random.default_rng(seed)
    i = TASK_NAMES.index("cardiomegaly")

    def split(n: int, squeeze: float) -> tuple[np.ndarray, np.ndarray]:
        labels = np.full((n, len(TASK_NAMES)), np.nan)
        y = rng.random(n) < 0.4
        labels[:, i] = y
        probs = np.full((n, len(TASK_NAMES)), 0.5)
        logit = rng.normal(size=n) + 2.0 * y - 0.8
        probs[:, i] = 0.5 + squeeze * (1 / (1 + np.exp(-logit)) - 0.5)
        return labels, probs

    val_labels, val_probs = split(300, 0.3)
    test_labels, test_probs = split(300, 1.0)
    return val_labels, val_probs, test_labels, test_probs


@pytest.mark.parametrize("rule", ["sensitivity", "net_benefit"])
def test_thresholds_come_from_the_threshold_split_and_figures_from_the_test_split(
    rule: str,
) -> None:
    val_labels, val_probs, test_labels, test_probs = _split_pair(3)
    i = TASK_NAMES.index("cardiomegaly")
    result = evaluate_predictions(
        test_labels, test_probs, threshold_labels=val_labels, threshold_probs=val_probs,
        rule=rule, n_boot=200,
    )  # fmt: skip
    m = result.tasks["cardiomegaly"]
    val_y, test_y = val_labels[:, i].astype(bool), test_labels[:, i].astype(bool)
    on_val = choose_threshold(val_y, val_probs[:, i], rule)
    on_test = choose_threshold(test_y, test_probs[:, i], rule)
    assert on_val != on_test  # the construction makes the two splits disagree
    assert m["validated"] and m["threshold"] == on_val == result.thresholds["cardiomegaly"]
    # Figures are the test split's, at the val threshold.
    assert m["auc"] == pytest.approx(roc_auc(test_y, test_probs[:, i]))
    assert m["n"] == 300 and m["val"]["auc"] == pytest.approx(roc_auc(val_y, val_probs[:, i]))
    refer = test_probs[:, i] >= on_val
    assert m["sensitivity"] == pytest.approx((refer & test_y).sum() / test_y.sum())
    assert m["specificity"] == pytest.approx((~refer & ~test_y).sum() / (~test_y).sum())
    # No threshold split: figures only, no task gets a threshold.
    alone = evaluate_predictions(test_labels, test_probs, n_boot=50)
    assert alone.thresholds == {} and not alone.tasks["cardiomegaly"]["validated"]


def test_an_uninformative_task_gets_no_threshold_and_no_flag() -> None:
    """AUC near 0.5 on the threshold split: no operating point, so no Present finding."""
    from agent.report.inputs import Findings, ModelIdentity, operating_points
    from agent.report.referral import referral
    from hyperct_core.checkpoint import ModelCard
    from hyperct_core.evaluate import operating_points_record

    rng = np.random.default_rng(8)
    n = 400
    names = ("cardiomegaly", "medical_material", "reduced_lv_systolic_function")
    labels = np.full((n, len(TASK_NAMES)), np.nan)
    probs = rng.random((n, len(TASK_NAMES)))
    for name in names:
        labels[:, TASK_NAMES.index(name)] = rng.random(n) < 0.4
    cm = TASK_NAMES.index("cardiomegaly")
    probs[:, cm] = 0.3 * labels[:, cm] + 0.7 * rng.random(n)  # informative, AUC ~0.9
    # medical_material and LV function: probabilities unrelated to the labels.
    half = n // 2
    result = evaluate_predictions(
        labels[half:], probs[half:], threshold_labels=labels[:half],
        threshold_probs=probs[:half], rule="net_benefit", n_boot=300,
    )  # fmt: skip
    assert result.tasks["cardiomegaly"]["validated"]
    for name in names[1:]:
        m = result.tasks[name]
        assert not m["validated"] and m["threshold"] is None, m["val"]
        assert "0.5" in m["reason"] or "below the minimum" in m["reason"]
        assert math.isnan(m["sensitivity"])
    # Even a higher-than-chance task is refused below the configured minimum.
    strict = evaluate_predictions(
        labels[half:], probs[half:], threshold_labels=labels[:half],
        threshold_probs=probs[:half], min_auc=0.999, n_boot=50,
    )  # fmt: skip
    assert strict.thresholds == {}

    # The card the result writes: the agent assesses only cardiomegaly, and a study
    # with every probability at 1.0 is flagged for nothing else (no echo referral either).
    record = operating_points_record(
        result, {"manifest": "m.csv", "split": "test", "threshold_split": "val", "date": "d"}
    )
    card = ModelCard(
        name="m", version="1", tasks=list(TASK_NAMES), model={}, preprocessing={},
        backbone={}, thresholds={**dict.fromkeys(TASK_NAMES, 0.5), **result.thresholds},
        training_data={}, validated=False, extra={"operating_points": record},
    )  # fmt: skip
    assert set(operating_points(card)) == {"cardiomegaly"}
    identity = ModelIdentity.from_card(card, "0" * 64)
    findings = Findings.from_model([1.0] * len(TASK_NAMES), identity)
    assert findings.status("cardiomegaly") == "present"
    assert findings.status("medical_material") == "not assessed"
    assert findings.status("reduced_lv_systolic_function") == "not assessed"
    assert referral(findings) == []
