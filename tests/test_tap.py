"""The cache reaches past the head: ``extract-features --tap`` and ``finetune --on-cache``.

One small real chain (MobileNet 0.25 at 32 px with BatchNorm statistics calibrated on noise, so the
activations are not trivial) over generated JPEGs: the cached activations are the live network's at
the tap, the top layers fine-tuned on them give a chain that reproduces the top-block model's logits
on images, BatchNorm statistics never move, and a kill during either step resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from headstart.pipeline.cli import main

from conftest import BACKBONE, make_class_folders, make_weights_file

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def extract_args(folder, out, weights, *extra):
    return ["extract-features", folder, "--out", out, "--backbone", BACKBONE["backbone"], "--alpha",
            BACKBONE["alpha"], "--weights", weights, "--image-size", BACKBONE["image_size"], "--batch-size", 4,
            "--validation-fraction", 0.25, "--test-fraction", 0.25, "--quiet", *extra]


@pytest.fixture(scope="module")
def tapped(tmp_path_factory):
    """A folder of two colour classes, a weights file, a cache with --tap top:8 and 2 views, a head."""
    root = tmp_path_factory.mktemp("tap")
    folder = make_class_folders(root / "images", per_class=16)
    weights = make_weights_file(root / "mobilenet.weights.h5")
    cache = root / "f.h5"
    result = run_cli(*extract_args(folder, cache, weights, "--tap", "top:8", "--augment-views", 2))
    assert result.exit_code == 0, result.output
    result = run_cli("train-head", cache, "--out", root / "head", "--epochs", 5, "--quiet")
    assert result.exit_code == 0, result.output
    return {"root": root, "folder": folder, "weights": weights, "cache": cache, "head": root / "head"}


def test_cached_activations_are_the_live_networks_at_the_tap(tapped):
    from headstart.features.chain import build_backbone_parts
    from headstart.features.tap import Tap, split_backbone
    from headstart.pipeline.data.image import load_image

    with h5py.File(tapped["cache"], "r") as f:
        tap = json.loads(f.attrs["config_json"])["tap"]
        assert tap["spec"] == "top:8" and tap["top_layers"] >= 8  # rounded up to a cut, never down
        assert list(f.attrs["tap_shape"]) == tap["shape"]
        keys = [k.decode() for k in f["validation"]["keys"][:]]
        cached = f["validation"]["activations"][:]
        assert cached.dtype == np.float16 and cached.shape == (len(keys), *tap["shape"])
        assert f["train"]["view_activations"].shape[1:] == (2, *tap["shape"])
        assert not np.array_equal(f["train"]["view_activations"][:, 0], f["train"]["activations"][:])
    base, preprocessing, _, _ = build_backbone_parts(BACKBONE["backbone"], weights=str(tapped["weights"]),
                                                     image_size=BACKBONE["image_size"], alpha=BACKBONE["alpha"])
    bottom, _ = split_backbone(base, Tap(tap["spec"], tap["top_layers"], tap["layer"], tuple(tap["shape"])))
    images = np.stack([load_image(str(tapped["folder"] / k), BACKBONE["image_size"]) for k in keys])
    live = np.asarray(bottom(preprocessing(images), training=False))
    assert np.abs(live).max() > 0.1  # not a trivial map: the comparison below means something
    np.testing.assert_allclose(cached.astype(np.float32), live, rtol=2e-3, atol=2e-3 * np.abs(live).max())


def test_top_n_rounds_up_to_a_cut_and_a_layer_inside_a_block_is_refused():
    import keras

    from headstart.features.errors import TapError
    from headstart.features.tap import resolve_tap

    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(32, 32, 3))
    inside = resolve_tap(base, "top:14")  # block_15_project_BN's output is crossed by block_15's skip
    assert inside.top_layers > 14 or inside.layer != "block_15_project_BN"
    keras.Model(base.layers[-inside.top_layers - 1].output, base.output)  # a real cut
    assert resolve_tap(base, "block_15_add").top_layers == 11
    with pytest.raises(TapError, match="block_15_project_BN.*not a cut"):
        resolve_tap(base, "block_15_project_BN")
    with pytest.raises(TapError, match="no layer 'nope'"):
        resolve_tap(base, "nope")


def test_bad_taps_are_one_line_exit_2(tapped, tmp_path):
    early = run_cli(*extract_args(tapped["folder"], tmp_path / "a.h5", tapped["weights"], "--tap", "top:0"))
    assert early.exit_code == 2 and "--tap: top:N needs a whole number N ≥ 1" in early.output, early.output
    late = run_cli(*extract_args(tapped["folder"], tmp_path / "b.h5", tapped["weights"], "--tap", "nope"))
    assert late.exit_code == 2, late.output
    assert late.output.strip().splitlines()[-1].endswith("the backbone has no layer 'nope'")
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "b.h5.partial").exists()


def test_on_cache_needs_a_tapped_cache_and_unfreeze_above_the_tap(tapped, tmp_path):
    plain = tmp_path / "plain.h5"
    assert run_cli(*extract_args(tapped["folder"], plain, tapped["weights"])).exit_code == 0
    assert run_cli("train-head", plain, "--out", tmp_path / "h", "--epochs", 1, "--quiet").exit_code == 0
    result = run_cli("finetune", tapped["folder"], "--head", tmp_path / "h", "--out", tmp_path / "ft", "--on-cache")
    assert result.exit_code == 2 and "holds no activations; extract it again with --tap" in result.output, result.output
    result = run_cli("finetune", tapped["folder"], "--head", tapped["head"], "--out", tmp_path / "ft2",
                     "--on-cache", "--unfreeze", "top:200")
    assert result.exit_code == 2 and "reaches below the cache's tap" in result.output, result.output
    result = run_cli("finetune", tapped["folder"], "--out", tmp_path / "ft3", "--on-cache")
    assert result.exit_code == 2 and "--on-cache needs --head" in result.output, result.output


def test_views_of_another_cache_are_matched_by_key_and_checked_for_provenance(tapped):
    """The view trials' kept caches join the on-cache fit row by row: by key, not by position."""
    from types import SimpleNamespace

    from headstart.features.cache import open_cache
    from headstart.pipeline.errors import DataError
    from headstart.pipeline.finetuning.on_cache import views_from

    path = str(tapped["cache"])
    with open_cache(path) as cache:
        train = cache.split("train")
        keys, stored = list(train.keys), np.asarray(train.view_activations[:])
        fields = dict(path="base.h5", config=cache.config, tap=cache.tap, class_names=cache.class_names)

    def base(keys=keys[::-1], activations=None, **changed):  # the head cache as views_from reads it; rows reversed
        own = np.zeros((len(keys), *stored.shape[2:]), stored.dtype) if activations is None else activations
        return SimpleNamespace(**{**fields, **changed},
                               split=lambda _: SimpleNamespace(keys=keys, activations=own))

    np.testing.assert_array_equal(views_from([path], base(), "train"), stored[::-1])  # each row its own views
    # Two caches of every row: each row has both caches' views, the first's first.
    np.testing.assert_array_equal(views_from([path, path], base(), "train"),
                                  np.concatenate([stored[::-1], stored[::-1]], axis=1))
    # A row the cache lacks (an item's part holds some rows, evidence.view_parts) is its own activations.
    new = np.full((1, *stored.shape[2:]), 7, stored.dtype)
    padded = views_from([path], base(keys=[*keys, "dogs/new.jpg"], activations=np.concatenate(
        [np.zeros((len(keys), *stored.shape[2:]), stored.dtype), new])), "train")
    np.testing.assert_array_equal(padded[:-1], stored)
    assert (padded[-1] == 7).all() and padded.shape[1] == stored.shape[1]
    with pytest.raises(DataError, match="different tap"):
        views_from([path], base(tap={**fields["tap"], "layer": "elsewhere"}), "train")
    with pytest.raises(DataError, match="different weights_fingerprint"):
        views_from([path], base(config={**fields["config"], "weights_fingerprint": "0" * 64}), "train")


@pytest.mark.slow
def test_on_cache_finetune_reproduces_its_cached_logits_and_keeps_batchnorm(tapped, tmp_path):
    import keras

    from headstart.features.cache import open_cache
    from headstart.features.chain import batchnorm_layers
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.finetuning.on_cache import top_block_model

    before = RunDir.open(tapped["head"], kind="head", recipe=True).rebuild(weights=str(tapped["weights"])).model
    stats = {layer.name: [w.copy() for w in layer.get_weights()] for layer in batchnorm_layers(before)}
    out = tmp_path / "ft"
    result = run_cli("finetune", tapped["folder"], "--head", tapped["head"], "--out", out, "--on-cache",
                     "--epochs", 4, "--lr", 1e-2, "--batch-size", 8, "--parity-samples", 8)
    assert result.exit_code == 0, result.output
    assert "on cached activations (--on-cache, --unfreeze top:" in result.output
    assert "parity after training: 8 validation images" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["on_cache"]["parity"]["max_abs_diff"] <= metrics["on_cache"]["parity"]["tolerance"]
    model = keras.saving.load_model(out / "model.keras")
    after = {layer.name: layer.get_weights() for layer in batchnorm_layers(model)}
    assert after.keys() == stats.keys()
    for name, weights in stats.items():  # BatchNorm moving statistics bit-identical
        for old, new in zip(weights, after[name]):
            np.testing.assert_array_equal(old, new)
    moved = [layer.name for layer in model.get_layer("backbone").layers[-8:]
             if layer.get_weights() and not isinstance(layer, keras.layers.BatchNormalization)
             and not all(np.array_equal(a, b) for a, b in zip(layer.get_weights(),
                                                             before.get_layer("backbone").get_layer(layer.name).get_weights()))]
    assert moved, "no layer above the tap was trained"
    # The saved model, on images, against the top-block model on cached test activations.
    with open_cache(tapped["cache"]) as cache:
        data = cache.split("test")
        tap, keys, activations = cache.tap, data.keys, data.activations[:].astype(np.float32)
    from headstart.pipeline.data.image import load_image

    images = np.stack([load_image(str(tapped["folder"] / k), BACKBONE["image_size"]) for k in keys])
    on_images = np.asarray(model(images, training=False))
    on_cache = np.asarray(top_block_model(model, tap)(activations, training=False))
    np.testing.assert_allclose(on_images, on_cache, atol=1e-2 * max(1.0, np.abs(on_cache).max()))
    assert run_cli("evaluate", out, tapped["folder"]).exit_code == 0


KILL_SCRIPT = "import sys\nfrom headstart.pipeline.cli import main\nmain(sys.argv[1:])\n"


def _launch(args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *[str(a) for a in args]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)


def _kill_when(proc, ready, timeout=180):
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return killed


@pytest.mark.slow
def test_sigkill_during_tapped_extraction_and_on_cache_finetune_then_the_same_command_resumes(tapped, tmp_path):
    out = tmp_path / "f.h5"
    args = extract_args(tapped["folder"], out, tapped["weights"], "--tap", "top:8", "--augment-views", 2)
    partial = Path(f"{out}.partial")

    def committed():
        try:
            with h5py.File(partial, "r", locking=False) as f:
                return int(f["train"].attrs["committed"]) >= 4
        except (OSError, KeyError):
            return False

    assert _kill_when(_launch(args), committed)
    # The kill needs its own process; the same command resuming does not (one TensorFlow start less).
    resumed = run_cli(*args)
    assert resumed.exit_code == 0, resumed.output
    with h5py.File(out, "r") as got, h5py.File(tapped["cache"], "r") as ref:
        for split in ("train", "validation", "test"):
            for name in ("activations", "features"):
                np.testing.assert_array_equal(got[split][name][:], ref[split][name][:])
        np.testing.assert_array_equal(got["train"]["view_activations"][:], ref["train"]["view_activations"][:])

    ft = tmp_path / "ft"
    ft_args = ["finetune", tapped["folder"], "--head", tapped["head"], "--out", ft, "--on-cache", "--epochs", 40,
               "--patience", 40, "--lr", 1e-3, "--batch-size", 8, "--quiet"]
    state = ft / "backup" / "finetune" / "state.json"
    assert _kill_when(_launch(ft_args), state.is_file)
    resumed = run_cli(*ft_args)
    assert resumed.exit_code == 0, resumed.output
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["epochs_run"] == 40 and metrics["on_cache"]["tap"]["spec"] == "top:8"


@pytest.mark.slow
def test_shards_with_a_tap_merge_into_the_unsharded_cache(tapped, tmp_path):
    shards = []
    for i in range(2):
        shard = tmp_path / f"s{i}.h5"
        result = run_cli(*extract_args(tapped["folder"], shard, tapped["weights"], "--tap", "top:8",
                                       "--augment-views", 2, "--shard", f"{i}/2"))
        assert result.exit_code == 0, result.output
        shards.append(shard)
    merged = tmp_path / "merged.h5"
    result = run_cli("merge-features", merged, *shards, "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(merged, "r") as got, h5py.File(tapped["cache"], "r") as ref:
        assert list(got.attrs["tap_shape"]) == list(ref.attrs["tap_shape"])
        for split in ("train", "validation", "test"):
            assert [k for k in got[split]["keys"][:]] == [k for k in ref[split]["keys"][:]]
            np.testing.assert_allclose(got[split]["activations"][:].astype(np.float32),
                                       ref[split]["activations"][:].astype(np.float32), rtol=1e-3, atol=1e-3)
        assert got["train"]["view_activations"].shape == ref["train"]["view_activations"].shape


@pytest.mark.slow
def test_probe_lr_on_the_cache_trains_each_rate_to_early_stopping_and_keeps_the_best(tapped, tmp_path):
    out = tmp_path / "ft"
    result = run_cli("finetune", tapped["folder"], "--head", tapped["head"], "--out", out, "--on-cache", "--probe", "lr",
                     "--epochs", 3, "--batch-size", 8, "--parity-samples", 4)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    rates = metrics["on_cache"]["rates"]
    assert [r["lr"] for r in rates] == [1e-5, 1e-4, 1e-3]
    assert all(1 <= r["best_epoch"] <= r["epochs_run"] <= 3 for r in rates)
    best = min(rates, key=lambda r: r["val_loss"])
    assert metrics["lr"] == best["lr"] and f"kept lr {best['lr']:g}" in result.output
    assert metrics["unfreeze"].startswith("top:")  # --unfreeze all on the cache: every layer above the tap
    refused = run_cli("finetune", tapped["folder"], "--head", tapped["head"], "--out", tmp_path / "x", "--on-cache",
                      "--probe", "lr,unfreeze")
    assert refused.exit_code == 2 and "--probe lr does" in refused.output, refused.output
