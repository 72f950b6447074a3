"""``ChainConfig``: the chain described once, in run.json, in the model file and in export.json; read
back checked; runs from before it still read; rebuilt from it, a head run gives its own logits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from headstart.features.chain_config import ChainBackbone, ChainConfig, ChainHead
from headstart.features.errors import ChainConfigError

CHAIN = ChainConfig(backbone=ChainBackbone("mobilenet_v2", "none", 0.35, "sha256:abc"), image_size=32,
                    pooling="avg", class_names=("a", "b", "c"), head=ChainHead("mlp", 64, "standard", 0.1),
                    task="multi_label", preprocessing="tf", tap="top:2", thresholds=(0.5, 0.25, 0.75),
                    temperature=(1.5, 2.0, 0.5))

#: A head run's run.json as train-head wrote it before the "chain" entry (today's keys, by hand).
OLD_HEAD_RECORD = {
    "kind": "head", "stage": "head", "task": "single_label", "class_names": ["cats", "dogs"], "num_classes": 2,
    "cache": {"path": "/nowhere/features.h5", "fingerprint": "f" * 64, "views": 0, "dtype": "float32",
              "config": {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "weights_fingerprint": "w1",
                         "image_size": 48, "pooling": "max", "preprocessing": "tf", "feature_shape": [1280],
                         "dtype": "float32", "class_names": ["cats", "dogs"]}},
    "head": {"kind": "linear", "hidden_units": 256, "normalize": "none", "dropout": 0.3, "multi_label": False},
}


def test_to_dict_and_from_dict_round_trip_every_field():
    data = json.loads(json.dumps(CHAIN.to_dict()))  # through JSON, as run.json holds it
    assert ChainConfig.from_dict(data) == CHAIN
    assert data["thresholds"] == {"a": 0.5, "b": 0.25, "c": 0.75}
    assert CHAIN.backbone_kwargs() == {"name": "mobilenet_v2", "weights": "none", "image_size": 32, "alpha": 0.35,
                                       "pooling": "avg", "expected_fingerprint": "sha256:abc"}
    assert CHAIN.head_kwargs() == {"kind": "mlp", "hidden_units": 64, "normalize": "standard", "dropout": 0.1,
                                   "multi_label": True}
    assert CHAIN.replace(weights="/w.h5").backbone == ChainBackbone("mobilenet_v2", "/w.h5", 0.35, "sha256:abc")


@pytest.mark.parametrize("field, value, words", [
    ("image_size", "big", "'image_size' should be a whole number of pixels"),
    ("backbone.weights", None, "'backbone.weights' is missing"),
    ("task", "regression", "'task' should be single_label or multi_label"),
    ("thresholds", {"a": 0.5}, "'thresholds' should be null or class → threshold"),
    ("version", 99, "'version' should be 1"),
])
def test_from_dict_names_the_place_and_the_field(field, value, words):
    data = CHAIN.to_dict()
    *parents, last = field.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value is None:
        del target[last]
    else:
        target[last] = value
    with pytest.raises(ChainConfigError) as caught:
        ChainConfig.from_dict(data, where="RUN/run.json: chain")
    assert str(caught.value).startswith("RUN/run.json: chain is damaged: ") and words in str(caught.value)
    assert caught.value.field == field


def _write_run(tmp_path: Path, record: dict) -> Path:
    run = tmp_path / "head"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (run / "head.keras").write_bytes(b"")  # RunDir.open asks only that it is there
    return run


def test_a_run_json_from_before_the_chain_entry_still_reads(tmp_path):
    from headstart.pipeline.store.rundir import RunDir

    run = RunDir.open(_write_run(tmp_path, OLD_HEAD_RECORD), kind="head", recipe=True)
    assert run.chain == ChainConfig(backbone=ChainBackbone("mobilenet_v2", "none", 0.35, "w1"), image_size=48,
                                    pooling="max", class_names=("cats", "dogs"), head=ChainHead(dropout=0.3),
                                    preprocessing="tf")
    assert run.image_size == 48


def test_a_damaged_chain_entry_is_one_error_naming_run_json_and_the_field(tmp_path):
    from headstart.pipeline.errors import RunDirError
    from headstart.pipeline.store.rundir import RunDir

    record = {**OLD_HEAD_RECORD, "chain": {**CHAIN.to_dict(), "pooling": 7}}
    path = _write_run(tmp_path, record)
    with pytest.raises(RunDirError) as caught:
        RunDir.open(path, kind="head", recipe=True)
    assert str(caught.value) == (f"{path / 'run.json'} is damaged: 'chain.pooling' should be a pooling word, "
                                 "not 7; run train-head again")
    old = copy.deepcopy(OLD_HEAD_RECORD)
    del old["cache"]["config"]["pooling"]
    (tmp_path / "old").mkdir()
    with pytest.raises(RunDirError, match="'cache.config.pooling' should be present"):
        RunDir.open(_write_run(tmp_path / "old", old), kind="head", recipe=True)


def test_the_chain_travels_in_a_keras_files_metadata_and_the_model_still_loads(tmp_path):
    import keras

    from headstart.pipeline.store.chain_record import read_keras_chain
    from headstart.pipeline.store.files import save_model_atomic
    from headstart.pipeline.store.rundir import load_model_file

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    save_model_atomic(model, tmp_path / "m.keras", metadata={"chain": CHAIN.to_dict()})
    assert read_keras_chain(tmp_path / "m.keras") == CHAIN
    loaded = load_model_file(tmp_path / "m.keras")  # safe mode, no custom object
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    save_model_atomic(model, tmp_path / "plain.keras")
    assert read_keras_chain(tmp_path / "plain.keras") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "plain.keras"]  # no temporary left


def _tiny_head_run(tmp_path: Path, epochs: int) -> Path:
    """Generated cat/dog images, a 32 px weights=None MobileNetV2 cache and a head on it; returns the images."""
    from conftest import make_splits
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    data = make_splits(tmp_path / "images", per_class=(4, 3, 2))
    extract_features(ExtractConfig(source=str(data), out=str(tmp_path / "f.h5"), backbone="mobilenet_v2",
                                   alpha=0.35, weights="none", image_size=32, batch_size=8))
    train_head(HeadConfig(features=str(tmp_path / "f.h5"), out=str(tmp_path / "head"), epochs=epochs, batch_size=8))
    return data


@pytest.mark.slow
def test_a_head_run_rebuilt_from_its_chain_gives_its_logits_and_finetune_records_it(tmp_path):
    from headstart.pipeline.config import FinetuneConfig
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.model.head_run import rebuild_head_chain
    from headstart.pipeline.model.parity import check_parity
    from headstart.pipeline.store.chain_record import read_keras_chain
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.finetuning.finetuning import finetune

    data = _tiny_head_run(tmp_path, epochs=2)
    head = RunDir.open(tmp_path / "head", kind="head", recipe=True)
    chain = ChainConfig.from_dict(head.record["chain"])
    assert chain == head.chain == read_keras_chain(head.model_path)
    assert (chain.backbone.name, chain.backbone.weights, chain.image_size, chain.pooling, chain.class_names) == \
        ("mobilenet_v2", "none", 32, "avg", ("cats", "dogs"))
    assert chain.backbone.fingerprint == head.cache_config["weights_fingerprint"]
    # Its old keys alone describe the same chain (a run.json from before "chain").
    from headstart.pipeline.store.chain_record import chain_from_record

    old = {k: v for k, v in head.record.items() if k != "chain"}
    assert chain_from_record(old, lambda *a: AssertionError(a)) == chain

    rebuilt = rebuild_head_chain(chain, head.model_path)
    source = open_source(SourceSpec(source=str(data)))
    parity = check_parity(rebuilt.model, head.cache, source, samples=4, batch_size=4)
    assert parity.samples == 4 and parity.max_abs_diff <= parity.tolerance

    result = finetune(FinetuneConfig(source=str(data), head=str(tmp_path / "head"), out=str(tmp_path / "ft"),
                                     epochs=1, batch_size=4, parity_samples=4))
    tuned = RunDir.open(result.run_dir, kind="finetune")
    assert tuned.chain == read_keras_chain(tuned.model_path)
    assert tuned.chain.replace(temperature=None) == chain
    # A model.keras copied alone still says what it answers: predict reads the chain in its metadata.
    from headstart.pipeline.commands.predictor import load_predictor

    alone = tmp_path / "alone" / "model.keras"
    alone.parent.mkdir()
    alone.write_bytes(tuned.model_path.read_bytes())
    predictor = load_predictor(alone)
    assert predictor.run is None and predictor.class_names == ["cats", "dogs"] and not predictor.multi_label


@pytest.mark.slow
def test_exports_and_a_lone_model_file_carry_the_chain(tmp_path):
    import shutil

    import onnx

    from headstart.pipeline.config import ExportConfig
    from headstart.pipeline.store.export_record import read_export_record
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.exporting import export_model_dir

    _tiny_head_run(tmp_path, epochs=1)
    chain = RunDir.open(tmp_path / "head", kind="head").chain
    export_model_dir(ExportConfig(model=str(tmp_path / "head"), out=str(tmp_path / "export"), formats=("onnx",),
                                  parity_samples=2, batch_size=4))  # quiet by default since the one reporter
    assert ChainConfig.from_dict(read_export_record(tmp_path / "export")["chain"]) == chain
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "export" / "model.onnx")).metadata_props}
    assert ChainConfig.from_dict(json.loads(metadata["chain"])) == chain

    alone = tmp_path / "alone" / "copy.keras"  # no run.json, no export.json beside it
    alone.parent.mkdir()
    shutil.copy(tmp_path / "head" / "head.keras", alone)
    from headstart.pipeline.store.chain_record import read_keras_chain

    assert read_keras_chain(alone) == chain


def _cache_with_recipe(path: Path) -> Path:
    """A 2-class cache of 16-d blobs whose config names a backbone, as extract-features writes it."""
    from headstart.features.store import create_or_resume

    rng = np.random.default_rng(0)
    config = {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "weights_fingerprint": "w9",
              "image_size": 32, "pooling": "avg", "preprocessing": "tf", "feature_shape": [16]}
    writer = create_or_resume(str(path), config=config, provenance={}, class_names=["x", "y"],
                              splits=["train", "validation"], feature_shape=(16,), dtype="float32", views=0)
    for split, n in (("train", 32), ("validation", 16)):
        labels = np.arange(n) % 2
        writer.append(split, features=(labels[:, None] * 3.0 + rng.normal(size=(n, 16))).astype("float32"),
                      labels=labels, keys=[f"{split}/{i}" for i in range(n)], views=None, consumed=n)
        writer.finish_split(split)
    writer.finalize()
    return path


def test_train_head_stores_the_chain_in_run_json_and_head_keras(tmp_path):
    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.store.chain_record import read_keras_chain
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.head_training import train_head

    cache = _cache_with_recipe(tmp_path / "f.h5")
    train_head(HeadConfig(features=str(cache), out=str(tmp_path / "head"), epochs=2, batch_size=16, dropout=0.25))
    run = RunDir.open(tmp_path / "head", kind="head", recipe=True)
    assert run.record["chain"] == run.chain.to_dict() and read_keras_chain(run.model_path) == run.chain
    assert run.chain == ChainConfig(backbone=ChainBackbone("mobilenet_v2", "none", 0.35, "w9"), image_size=32,
                                    pooling="avg", class_names=("x", "y"), head=ChainHead(dropout=0.25),
                                    preprocessing="tf")


def test_a_head_on_a_cache_without_a_backbone_recipe_has_no_chain_and_still_reads(tmp_path):
    from conftest import make_cache
    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.store.chain_record import read_keras_chain
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.head_training import train_head

    cache = make_cache(tmp_path / "f.h5", counts={"train": 32, "validation": 16})
    train_head(HeadConfig(features=str(cache), out=str(tmp_path / "head"), epochs=1, batch_size=16))
    run = RunDir.open(tmp_path / "head", kind="head")  # another tool's cache: no recipe asked for
    assert "chain" not in run.record and read_keras_chain(run.model_path) is None
    assert run.class_names == ["class0", "class1"]
