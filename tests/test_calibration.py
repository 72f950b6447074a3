"""Temperature scaling: the fit recovers a known temperature, the layer survives save/load and the
serving half, and the measures (ECE over 15 bins, NLL) move the right way."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.pipeline.model.calibration import fit_temperature, model_temperature, nll, with_temperature
from headstart.pipeline.report.calibration_measures import (before_after, calibration_measures, describe_calibration,
                                                           expected_calibration_error, reliability_bins)


def overconfident(rng: np.random.Generator, n: int, k: int, t_true: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), and logits z · t_true: a model t_true times too sure of itself."""
    z = rng.normal(0, 2.0, size=(n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return labels, z * t_true


def test_fit_recovers_the_temperature_and_lowers_nll_and_ece():
    labels, logits = overconfident(np.random.default_rng(0), 4000, 5, 3.0)
    [t] = fit_temperature(labels, logits, 5)
    assert 2.7 < t < 3.3, t
    record = before_after(labels, logits / t, [t], 5)
    assert record["after"]["nll"] < record["before"]["nll"] - 0.1
    assert record["after"]["ece"] < 0.03 < record["before"]["ece"]
    assert record["temperature"] == [t]
    assert describe_calibration({"method": "temperature", "temperature": [t], "test": record}).startswith(
        f"temperature {t:.3f} (test ECE")


def test_binary_single_logit_and_multi_label_per_class_temperatures():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, size=(3000, 3))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.int64)
    scaled = z * np.array([0.5, 1.0, 4.0])  # class 0 underconfident, class 2 overconfident
    temps = fit_temperature(y, scaled, 3, multi_label=True)
    np.testing.assert_allclose(temps, [0.5, 1.0, 4.0], rtol=0.15)
    [t] = fit_temperature(y[:, 2], scaled[:, 2:3], 2)  # two classes: one sigmoid logit
    assert abs(t - 4.0) < 0.6
    assert nll(y[:, 2], scaled[:, 2:3] / t, 2) < nll(y[:, 2], scaled[:, 2:3], 2)


def test_no_temperature_when_validation_is_all_right():
    labels = np.array([0, 1, 0, 1])
    logits = np.array([[-6.0], [6.0], [-4.0], [2.0]])  # two classes, every row right
    assert fit_temperature(labels, logits, 2) == [None]  # the NLL falls as T → 0: nothing to fit
    y = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    z = np.array([[-6.0, 3.0], [6.0, 2.0], [-4.0, -3.0], [2.0, 2.5]])
    [t0, t1] = fit_temperature(y, z, 2, multi_label=True)
    assert t0 is None and t1 is not None and t1 > 1  # class 1: one confident mistake, a softer sigmoid


def test_bins_and_ece_by_hand():
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    outcome = np.array([1.0, 0.0, 1.0, 1.0])
    bins = reliability_bins(confidence, outcome)
    assert [b["count"] for b in bins] == [2, 2]
    assert expected_calibration_error(bins) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    # Two rows, both predicted class 0 with confidence sigmoid(4); one right: |0.5 - 0.982|.
    measures = calibration_measures(np.array([0, 1]), np.array([[-4.0], [-4.0]]), 2)
    assert measures["ece"] == pytest.approx(abs(0.5 - 1 / (1 + np.exp(-4.0))), rel=1e-6)


@pytest.mark.parametrize("temperature", [[2.0], [0.5, 1.0, 4.0]])
def test_layer_survives_save_load_and_the_serving_half(tmp_path, temperature):
    import keras

    from headstart.features.chain import build_chain
    from headstart.pipeline.model.assembly import inference_model

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)], name="backbone")
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="head")
    chain = build_chain(backbone, keras.layers.Rescaling(1 / 255, name="preprocessing"),
                        keras.layers.GlobalAveragePooling2D(name="pooling"), head=head,
                        augmentation=keras.Sequential([keras.layers.RandomFlip()], name="augmentation"))
    assert model_temperature(chain) is None
    calibrated = with_temperature(chain, temperature)
    images = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
    raw = chain.predict(images, verbose=0)
    np.testing.assert_allclose(calibrated.predict(images, verbose=0), raw / np.array(temperature), rtol=1e-5)
    path = tmp_path / "model.keras"
    calibrated.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(model_temperature(loaded), temperature, rtol=1e-6)
    serving = inference_model(loaded)
    assert model_temperature(serving) == pytest.approx(temperature)
    np.testing.assert_allclose(serving.predict(images, verbose=0), raw / np.array(temperature), rtol=1e-5, atol=1e-6)


def test_calibrate_none_keeps_the_model_and_a_bad_word_is_refused(tmp_path):
    from types import SimpleNamespace

    from click.testing import CliRunner

    from headstart.pipeline.cli import main
    from headstart.pipeline.config import FinetuneConfig
    from headstart.pipeline.finetuning.final import calibrate
    from headstart.features.reporter import QUIET, LineReporter

    model, predictions = object(), SimpleNamespace(labels=np.array([0, 1]), logits=np.zeros((2, 1)))
    kept, same, record = calibrate(FinetuneConfig(calibrate="none"), model, predictions, class_names=["a", "b"],
                                   multi_label=False, reporter=QUIET)
    assert kept is model and same is predictions and record == {"method": "none", "reason": "--calibrate none"}
    assert describe_calibration(record) == "none (--calibrate none)"
    lines: list[str] = []
    _, _, record = calibrate(FinetuneConfig(), model, None, class_names=["a", "b"], multi_label=False,
                             reporter=LineReporter(lines.append))
    assert record["reason"] == "no validation images" and lines == ["calibration: skipped (no validation images)"]
    for command in ("finetune", "run"):
        result = CliRunner().invoke(main, [command, str(tmp_path), "--out", str(tmp_path / "o"), "--calibrate", "platt"])
        assert result.exit_code == 2 and "--calibrate" in result.output and "temperature" in result.output, result.output
