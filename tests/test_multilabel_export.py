"""A multi-label model's exports carry its task and thresholds; predict reads them from the file."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_image
from test_multilabel_e2e import WEIGHTS


@pytest.mark.slow
def test_exports_carry_thresholds_and_predict_reads_label_sets_from_them(tmp_path):
    import keras
    import tensorflow as tf

    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.data.image import load_image
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.report.multilabel_metrics import thresholds_record
    from headstart.pipeline.commands.prediction import predict_images
    from headstart.pipeline.commands.export import export_model
    from headstart.pipeline.commands.predictor import load_predictor

    keras.utils.set_random_seed(0)
    base, pre, pool, info = build_backbone_parts("mobilenet_v2", weights=str(WEIGHTS), image_size=32, alpha=0.35,
                                                 pooling="avg")
    model = build_chain(base, pre, pool, head=build_head(info.feature_shape, 3, multi_label=True))
    names = ["circle", "square", "triangle"]
    record = thresholds_record([0.2, 0.5, 0.8], names, "validation")
    done = export_model(model, tmp_path, ("saved_model", "onnx"), class_names=names, thresholds=record)
    assert all(done.values()), done
    rng = np.random.default_rng(0)
    files = [write_image(tmp_path / f"{i}.jpg", rng, size=(40, 40)) for i in range(3)]
    expected = 1 / (1 + np.exp(-model.predict(np.stack([load_image(f, 32) for f in files]), verbose=0)))

    loaded = tf.saved_model.load(done["saved_model"])
    out = loaded.signatures["serve_bytes"](image_bytes=tf.constant([f.read_bytes() for f in files]))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"].numpy(), expected >= np.array([0.2, 0.5, 0.8]))
    for path in done.values():  # no run.json beside them: what the file holds is all there is
        predictor = load_predictor(path)
        assert predictor.multi_label and predictor.class_names == names
        np.testing.assert_allclose(predictor.thresholds, [0.2, 0.5, 0.8])
        rows = predict_images(path, files)
        for row, p in zip(rows, expected):
            assert {n for n, _ in row.labels} == {n for n, q, t in zip(names, p, (0.2, 0.5, 0.8)) if q >= t}
            assert row.probabilities == pytest.approx(dict(zip(names, p.tolist())), abs=1e-4)
