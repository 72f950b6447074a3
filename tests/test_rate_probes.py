"""The fine-tuning probes: short runs from the seeded weights, judged on validation, resumable."""

from __future__ import annotations

import numpy as np
import pytest


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="backbone")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _data():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], "float32"))[:, None]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16), x, y


def test_each_rate_starts_from_the_seeded_weights_and_the_best_is_chosen():
    from headstart.pipeline.finetuning.rate_probes import PROBE_LRS, probe_rates
    from headstart.features.reporter import QUIET

    model = _model()
    train, x, y = _data()
    seeded = model.get_weights()
    saved = []

    def score():
        return float(np.mean((model.predict(x, verbose=0) - y) ** 2))

    seeded_score = score()
    result = probe_rates(model, probe=("lr",), lr=1e-5, unfreeze="all", steps=4, train=train.repeat(), score=score,
                         measure="loss", seeded=seeded_score, prepare=lambda u: None, seeded_weights=seeded, done={},
                         save=saved.append, reporter=QUIET)
    assert [p.lr for p in result.probes] == list(PROBE_LRS) and [p.lr for p in saved] == list(PROBE_LRS)
    assert all(p.steps == 4 for p in result.probes)
    assert result.lr == min(result.probes, key=lambda p: p.score).lr == 1e-3  # the fastest descent in 4 steps
    assert result.finetune and result.seeded == seeded_score
    for now, before in zip(model.get_weights(), seeded):  # the model is handed back at its seeded weights
        np.testing.assert_array_equal(now, before)
    # A probe at a rate is the same computation whatever ran before it: Adam is reset, not carried.
    again = probe_rates(model, probe=("lr",), lr=1e-5, unfreeze="all", steps=4, train=train.repeat(), score=score,
                        measure="loss", seeded=seeded_score, prepare=lambda u: None, seeded_weights=seeded, done={},
                        save=lambda p: None, reporter=QUIET)
    assert [p.score for p in again.probes] == pytest.approx([p.score for p in result.probes], rel=1e-5)


def test_no_fine_tuning_when_no_probe_beats_the_seeded_model_and_saved_probes_are_not_rerun():
    from headstart.pipeline.finetuning.rate_probes import probe_rates
    from headstart.features.reporter import QUIET

    model = _model()
    train, _, _ = _data()
    seeded = model.get_weights()
    done = {"lr=1e-05,unfreeze=all": {"lr": 1e-5, "unfreeze": "all", "score": 0.9, "steps": 4, "seconds": 1.0}}
    ran = []
    result = probe_rates(model, probe=("lr",), lr=1e-5, unfreeze="all", steps=2, train=train.repeat(),
                         score=lambda: 0.5, measure="accuracy", seeded=0.95, prepare=lambda u: None,
                         seeded_weights=seeded, done=done, save=ran.append, reporter=QUIET)
    assert [p.lr for p in ran] == [1e-4, 1e-3]  # the saved probe came back from the record
    assert result.probes[0].score == 0.9 and result.lr == 1e-5 and not result.finetune


def test_probe_spec_parses_before_tensorflow():
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.finetuning.rate_probes import parse_probe

    assert parse_probe("none") == () and parse_probe("unfreeze, lr") == ("lr", "unfreeze")
    with pytest.raises(OptionError, match="probe must be none, lr, unfreeze or lr,unfreeze"):
        parse_probe("depth")


def test_unfreezing_twice_thaws_what_an_earlier_call_froze_and_keeps_batchnorm_frozen():
    import keras

    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.assembly import trainable_counts, unfreeze_backbone
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.model.unfreeze import parse_unfreeze

    base, preprocessing, pooling, info = build_backbone_parts("mobilenet_v2", weights="none", image_size=32, alpha=0.35)
    model = build_chain(base, preprocessing, pooling, head=build_head(info.feature_shape, 2))
    first = trainable_counts(model)
    unfreeze_backbone(model, parse_unfreeze("all"))
    everything = trainable_counts(model)["trainable_params"]
    unfreeze_backbone(model, parse_unfreeze("top:10"))
    assert trainable_counts(model)["trainable_params"] < everything
    unfreeze_backbone(model, parse_unfreeze("all"))
    assert trainable_counts(model)["trainable_params"] == everything and first is not None
    assert not any(layer.trainable for layer in model.get_layer("backbone").layers
                   if isinstance(layer, keras.layers.BatchNormalization))
