"""The input path: sources, splits, decoding every format, bad files, decompression bombs, TFDS."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import make_class_folders, write_image
from headstart.pipeline.config import CATS_VS_DOGS_SPLITS
from headstart.pipeline.data.image import (MAX_IMAGE_PIXELS, decode_and_resize, decode_or_reason, load_image,
                                           probe_image)
from headstart.pipeline.data.splits import hash_fraction
from headstart.pipeline.data.source_spec import parse_split_option
from headstart.pipeline.data.sources import resolve_source
from headstart.pipeline.errors import DataError, OptionError


def _elements(ds):
    """Every element of a dataset as a list of (key, label, error, image) with Python values."""
    return [(e["key"].numpy().decode(), int(e["label"].numpy()), e["error"].numpy().decode(), e["image"].numpy())
            for e in ds]


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte, well-formed PNG whose IHDR claims width × height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noisy(size=(24, 24), colour=(200, 60, 30), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.clip(np.array(colour, np.float32) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


# --------------------------------------------------------------------------------------------
# --split parsing


def test_parse_split_option_keeps_order():
    assert parse_split_option(()) == {}
    parsed = parse_split_option(("train=train[:80%]", " validation = train[80%:] ", "extra=test+validation"))
    assert list(parsed.items()) == [("train", "train[:80%]"), ("validation", "train[80%:]"),
                                    ("extra", "test+validation")]


@pytest.mark.parametrize("value, fragment", [
    ("train", "expected NAME=SPEC"),
    ("=train[:10%]", "expected NAME=SPEC"),
    ("train=", "expected NAME=SPEC"),
    ("tr ain=train", "split name"),
])
def test_parse_split_option_rejects_bad_syntax(value, fragment):
    with pytest.raises(OptionError, match=fragment) as err:
        parse_split_option((value,))
    assert value in str(err.value) and "\n" not in str(err.value)


def test_parse_split_option_rejects_a_name_twice():
    with pytest.raises(OptionError, match="given twice"):
        parse_split_option(("train=train[:10%]", "train=train[:20%]"))


# --------------------------------------------------------------------------------------------
# Directory sources


def test_hashed_tree_sorted_classes_relative_keys(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("zebra", "Apple", "mango"):
        for i in range(3):
            _touch(root / cls / f"{i}.jpg")
    _touch(root / "mango" / "deeper" / "nested.png")
    _touch(root / "mango" / ".DS_Store")  # hidden: ignored
    _touch(root / "README.txt")  # not inside a class folder: ignored
    source = resolve_source(str(root), validation_fraction=0.0, test_fraction=0.0)
    assert source.class_names == ["Apple", "mango", "zebra"]
    assert source.split_names == ["train"]
    keys = source.keys("train")
    assert keys == sorted(keys) and "mango/deeper/nested.png" in keys and len(keys) == 10
    assert all("\\" not in k and not k.startswith("/") for k in keys)
    described = source.describe()
    assert described["kind"] == "dir" and described["layout"] == "hashed"
    assert described["root"] == str(root.resolve()) and described["splits"] == {"train": "sha1[0:1]"}


def test_explicit_split_folders_are_used_as_given(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 4), ("validation", 2), ("test", 1)):
        for cls in ("dogs", "cats"):
            if split == "test" and cls == "dogs":
                continue  # a split may lack a class; labels still follow the union of names
            make_class_folders(root / split, classes=(cls,), per_class=n, seed=n)
    source = resolve_source(str(root), validation_fraction=0.5, test_fraction=0.3)  # fractions unused
    assert source.class_names == ["cats", "dogs"]
    assert source.split_names == ["train", "validation", "test"]
    assert [source.count(s) for s in source.split_names] == [8, 4, 1]
    assert source.describe()["layout"] == "explicit"
    assert source.describe()["splits"] == {"train": "train/", "validation": "validation/", "test": "test/"}
    test = _elements(source.dataset("test", 16))
    assert [(k, label, err) for k, label, err, _ in test] == [("test/cats/cats_000.jpg", 0, "")]
    val = _elements(source.dataset("validation", 16))
    assert [label for k, label, _, _ in val] == [0, 0, 1, 1]
    assert all(k.startswith("validation/") for k, _, _, _ in val)


def test_explicit_layout_without_test_split(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=2)
    make_class_folders(root / "validation", per_class=1)
    source = resolve_source(str(root))
    assert source.split_names == ["train", "validation"]
    with pytest.raises(DataError, match="no split 'test'"):
        source.dataset("test", 16)


def _split_of_every_key(source):
    return {k: s for s in source.split_names for k in source.keys(s)}


def test_hashed_splits_are_stable_when_files_are_added(tmp_path):
    # Hashed splits are stratified per class (issue 11): a class's files are ranked by their hash
    # and each split takes its share of the ranking. Adding a file to a class shifts each of its
    # two boundaries by at most one rank, so at most two of its old files change split, each to a
    # neighbouring split; other classes, and a new class, move nothing. (The older threshold rule
    # moved nothing at all, but could leave a rare class out of validation or test.)
    root = tmp_path / "imgs"
    for i in range(60):
        _touch(root / ("a" if i % 2 else "b") / f"img_{i:03d}.jpg")
    before = _split_of_every_key(resolve_source(str(root), validation_fraction=0.2, test_fraction=0.2))
    _touch(root / "a" / "img_extra.jpg")
    for i in range(3):
        _touch(root / "c" / f"new_class_{i}.jpg")  # the smallest class a 3-way split takes
    after = _split_of_every_key(resolve_source(str(root), validation_fraction=0.2, test_fraction=0.2))
    assert len(after) == 64
    moved = [k for k in before if after[k] != before[k]]
    assert len(moved) <= 2 and all(k.startswith("a/") for k in moved)
    order = ["test", "validation", "train"]
    assert all(abs(order.index(before[k]) - order.index(after[k])) == 1 for k in moved)
    assert sorted(after[k] for k in after if k.startswith("c/")) == ["test", "train", "validation"]
    # The split depends only on the keys, so a second listing agrees too.
    assert _split_of_every_key(resolve_source(str(root), validation_fraction=0.2, test_fraction=0.2)) == after
    # Within a class, test holds the lowest hashes and train the highest.
    ranked = sorted((k for k in after if k.startswith("b/")), key=hash_fraction)
    assert [after[k] for k in ranked] == ["test"] * 6 + ["validation"] * 6 + ["train"] * 18


def test_hashed_fractions_are_roughly_respected(tmp_path):
    root = tmp_path / "imgs"
    for i in range(2000):
        _touch(root / f"class{i % 4}" / f"{i}.jpg")
    source = resolve_source(str(root), validation_fraction=0.15, test_fraction=0.25)
    counts = {s: source.count(s) for s in source.split_names}
    assert sum(counts.values()) == 2000
    # Binomial standard deviations are ~16 and ~19 images; allow four of them.
    assert abs(counts["validation"] - 300) < 70 and abs(counts["test"] - 500) < 80
    # Stratified hashed splits are recorded as such (older unstratified caches said "sha1[…]").
    assert source.describe()["splits"] == {"train": "sha1-stratified[0.4:1]",
                                           "validation": "sha1-stratified[0.25:0.4]",
                                           "test": "sha1-stratified[0:0.25]"}


def test_zero_fraction_leaves_the_split_out(tmp_path):
    make_class_folders(tmp_path / "imgs", per_class=3)
    source = resolve_source(str(tmp_path / "imgs"), validation_fraction=0.3, test_fraction=0.0)
    assert source.split_names == ["train", "validation"]


def test_directory_source_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="not a directory"):
        resolve_source(str(_touch(tmp_path / "file.jpg")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        resolve_source(str(tmp_path / "empty"))
    make_class_folders(tmp_path / "one_empty", per_class=1)
    (tmp_path / "one_empty" / "birds").mkdir()
    _touch(tmp_path / "one_empty" / "birds" / ".hidden")
    with pytest.raises(DataError, match=r"birds: empty class folder"):
        resolve_source(str(tmp_path / "one_empty"))
    make_class_folders(tmp_path / "mixed" / "train", per_class=1)
    make_class_folders(tmp_path / "mixed", classes=("cats",), per_class=1)
    with pytest.raises(DataError, match="mixes split folders"):
        resolve_source(str(tmp_path / "mixed"))
    make_class_folders(tmp_path / "ok", per_class=1)
    with pytest.raises(OptionError, match="split_specs applies to tfds"):
        resolve_source(str(tmp_path / "ok"), split_specs={"train": "train[:10%]"})
    with pytest.raises(OptionError, match="test_fraction"):
        resolve_source(str(tmp_path / "ok"), test_fraction=1.0)
    with pytest.raises(OptionError, match="leave some training data"):
        resolve_source(str(tmp_path / "ok"), validation_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------------------------
# Decoding formats


FORMATS = {
    # name: (PIL format, PIL mode, save kwargs, tolerance against PIL's own RGB decode)
    "jpeg_rgb": ("JPEG", "RGB", {}, 3),
    "jpeg_gray": ("JPEG", "L", {}, 3),
    "jpeg_cmyk": ("JPEG", "CMYK", {}, 3),
    "png_rgb": ("PNG", "RGB", {}, 0),
    "png_gray": ("PNG", "L", {}, 0),
    "png_rgba": ("PNG", "RGBA", {}, 0),
    "png_palette": ("PNG", "P", {}, 0),
    "gif": ("GIF", "P", {}, 0),
    "bmp_rgb": ("BMP", "RGB", {}, 0),
    "bmp_gray": ("BMP", "L", {}, 0),
    "bmp_palette": ("BMP", "P", {}, 0),
    "bmp_1bit": ("BMP", "1", {}, 0),
    "webp_lossy": ("WEBP", "RGB", {"quality": 95}, 4),
    "webp_lossless": ("WEBP", "RGB", {"lossless": True}, 0),
    "webp_rgba": ("WEBP", "RGBA", {"lossless": True}, 0),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_decodes_to_rgb_like_pil(tmp_path, name):
    fmt, mode, kwargs, tolerance = FORMATS[name]
    img = _noisy((24, 24), colour=(200, 60, 30))
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / f"{name}.img"
    path.write_bytes(_encode(img, fmt, **kwargs))
    reference = np.asarray(Image.open(path).convert("RGB"), np.float32)

    image = load_image(path, 24)  # same size: resize is the identity, pixels compare exactly
    assert image.shape == (24, 24, 3) and image.dtype == np.float32
    assert np.abs(image - reference).max() <= tolerance, name
    if mode in ("L", "1"):
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    elif mode != "1":
        # PIL is the reference above; this checks it is the colour written (red-orange), not noise.
        assert np.allclose(image.mean(axis=(0, 1)), (200, 60, 30), atol=12), image.mean(axis=(0, 1))

    small = load_image(path, 7)
    assert small.shape == (7, 7, 3) and small.dtype == np.float32
    assert 0.0 <= small.min() and small.max() <= 255.0


def test_resize_is_the_guides_bilinear_resize_without_crop(tmp_path):
    path = write_image(tmp_path / "wide.png", np.random.default_rng(1), size=(40, 16))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    expected = tf.image.resize(pixels, (20, 20), method="bilinear").numpy()
    np.testing.assert_array_equal(load_image(path, 20), expected)


def test_animated_gif_and_webp_give_their_first_frame(tmp_path):
    first, second = _noisy(colour=(200, 60, 30), seed=1), _noisy(colour=(30, 60, 200), seed=2)
    for fmt, kwargs, tolerance in (("GIF", {}, 40), ("WEBP", {"lossless": True}, 0)):
        path = tmp_path / f"anim.{fmt.lower()}"
        path.write_bytes(_encode(first, fmt, save_all=True, append_images=[second], **kwargs))
        assert probe_image(path.read_bytes()).frames >= 1
        image = load_image(path, 24)
        # GIF palettes quantise colours; the mean still tells the first frame from the second.
        assert np.abs(image.mean(axis=(0, 1)) - (200, 60, 30)).max() < 15, fmt
        if tolerance == 0:
            np.testing.assert_array_equal(image, np.asarray(first, np.float32))


def test_decode_and_resize_is_the_same_eagerly_and_in_a_graph(tmp_path):
    data = _encode(_noisy((30, 20)), "JPEG")
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    eager = decode_and_resize(data, 16).numpy()
    np.testing.assert_array_equal(eager, load_image(path, 16))
    np.testing.assert_array_equal(decode_and_resize(tf.constant(data), 16).numpy(), eager)
    mapped = tf.data.Dataset.from_tensors(tf.constant(data)).map(lambda b: decode_and_resize(b, 16))
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), eager)
    with pytest.raises(DataError, match="not an image"):
        decode_and_resize(b"hello", 16)
    with pytest.raises(OptionError, match="image_size"):
        decode_and_resize(data, 0)


def test_load_image_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jpg: cannot read file"):
        load_image(tmp_path / "missing.jpg", 16)
    text = _touch(tmp_path / "notes.jpg", b"just some text, not a picture")
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        load_image(text, 16)


# --------------------------------------------------------------------------------------------
# Bad files and decompression bombs


def _bad_files() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, expected reason fragment), one of each kind of bad file."""
    jpeg = _encode(_noisy((32, 32)), "JPEG")
    png = _encode(_noisy((32, 32)), "PNG")
    # Well-formed structure, garbage inside: a Huffman table of 0xFF bytes, a zeroed zlib stream.
    # (Garbage in JPEG scan data is not enough: libjpeg warns and still returns an image.)
    dht = jpeg.index(b"\xff\xc4")
    dht_end = dht + 2 + int.from_bytes(jpeg[dht + 2:dht + 4], "big")
    bad_huffman = jpeg[:dht + 5] + b"\xff" * (dht_end - dht - 5) + jpeg[dht_end:]
    idat = png.index(b"IDAT")
    return {
        "empty.jpg": (b"", "empty file"),
        "notes.txt": (b"these are not the pixels you are looking for", "not an image"),
        "fake.png": (b"<html><body>404 not found</body></html>", "not an image"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated image"),
        "cut.png": (png[: len(png) - 20], "truncated image"),
        "header_only.jpg": (jpeg[:20], "truncated image"),
        "bad_huffman.jpg": (bad_huffman, "corrupt image data"),
        "bad_zlib.png": (png[:idat + 4] + b"\x00" * 32 + png[idat + 36:], "corrupt image data"),
        "scan.tiff": (_encode(_noisy((8, 8)), "TIFF"), "unsupported format 'TIFF'"),
        "photo.heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40, "unsupported format 'HEIC'"),
        "bomb.png": (_png_declaring(20000, 20000), "image too large: 20000x20000 exceeds the limit of"),
    }


def test_bad_files_are_reported_one_by_one_next_to_good_ones(tmp_path):
    root = make_class_folders(tmp_path / "imgs", per_class=5)
    bad = _bad_files()
    for i, (name, (data, _)) in enumerate(sorted(bad.items())):
        _touch(root / ("cats" if i % 2 else "dogs") / name, data)
    _touch(root / "cats" / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    source = resolve_source(str(root), validation_fraction=0.0, test_fraction=0.0)
    assert source.count("train") == 10 + len(bad)

    # Batched, as consumers read it: no batch loses its good images to a bad neighbour.
    seen = []
    for batch in source.dataset("train", 20).batch(4):
        for key, label, error, image in zip(batch["key"].numpy(), batch["label"].numpy(),
                                            batch["error"].numpy(), batch["image"].numpy()):
            seen.append((key.decode(), int(label), error.decode(), image))
    keys = [k for k, _, _, _ in seen]
    assert keys == sorted(keys) == source.keys("train")
    good = {k for k, _, err, _ in seen if not err}
    assert good == {f"{c}/{c}_{i:03d}.jpg" for c in ("cats", "dogs") for i in range(5)}
    reasons = {k.split("/", 1)[1]: err for k, _, err, _ in seen if err}
    assert sorted(reasons) == sorted(bad)
    for name, (_, fragment) in bad.items():
        assert fragment in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name] and len(reasons[name]) < 200
    for key, label, err, image in seen:
        assert image.shape == (20, 20, 3) and image.dtype == np.float32
        assert label == (0 if key.startswith("cats/") else 1)
        if err:
            assert not image.any()
        else:
            assert image.max() > 0

    again = [(k, err) for k, _, err, _ in _elements(source.dataset("train", 20))]
    assert again == [(k, err) for k, _, err, _ in seen]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_decompression_bomb_is_refused_from_the_header(fmt):
    # A small real image whose header is rewritten to claim a huge size: decoding it would either
    # take gigabytes or fail, so refusing it fast proves the header check came first.
    data = bytearray(_encode(_noisy((16, 16)), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    if fmt == "PNG":
        data = bytearray(_png_declaring(20000, 20000))
    elif fmt == "JPEG":
        sof = data.index(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, 30000, 30000)
    elif fmt == "GIF":
        struct.pack_into("<HH", data, 6, 60000, 60000)
    elif fmt == "BMP":
        struct.pack_into("<ii", data, 18, 30000, 30000)
    elif fmt == "WEBP":
        assert data[12:16] == b"VP8L"
        struct.pack_into("<I", data, 21, (16383 << 14) | 16383 | (data[24] >> 4 << 28))
    start = time.perf_counter()
    image, reason = decode_or_reason(bytes(data), 32)
    assert time.perf_counter() - start < 0.5
    assert reason.startswith("image too large: ") and f"limit of {MAX_IMAGE_PIXELS} pixels" in reason, reason
    assert image.shape == (32, 32, 3) and not image.numpy().any()


def test_pixel_limit_is_settable_per_call(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_encode(_noisy((100, 60)), "PNG"))
    assert load_image(path, 8).shape == (8, 8, 3)
    with pytest.raises(DataError, match=r"a\.png: image too large: 100x60 exceeds the limit of 5000 pixels"):
        load_image(path, 8, max_pixels=5000)
    source = resolve_source(str(make_class_folders(tmp_path / "imgs", per_class=1)),
                            validation_fraction=0.0, test_fraction=0.0)
    errors = [err for _, _, err, _ in _elements(source.dataset("train", 8, max_pixels=100))]
    assert len(errors) == 2 and all(e.startswith("image too large") for e in errors)


def test_animated_gif_frames_count_towards_the_limit():
    frames = [_noisy((40, 40), seed=i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(5)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    info = probe_image(data)
    assert (info.frames, info.pixels) == (5, 5 * 1600)
    _, reason = decode_or_reason(data, 8, max_pixels=4000)
    assert reason.startswith("image too large: 40x40 (5 frames, 8000 pixels in all)"), reason
    assert decode_or_reason(data, 8, max_pixels=8000)[1] == ""


# --------------------------------------------------------------------------------------------
# TFDS (mocked: no network here)


@pytest.mark.slow
def test_tfds_cats_vs_dogs_uses_the_guides_splits():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        source = resolve_source("tfds:cats_vs_dogs")
        assert source.class_names == ["cat", "dog"]
        assert source.split_names == ["train", "validation", "test"]
        described = source.describe()
        assert described["kind"] == "tfds" and described["splits"] == CATS_VS_DOGS_SPLITS
        assert source.count("validation") == 6
        rows = _elements(source.dataset("validation", 24))
        again = _elements(source.dataset("validation", 24))
    assert len(rows) == 6 and len({k for k, _, _, _ in rows}) == 6
    assert all(err == "" and label in (0, 1) and image.shape == (24, 24, 3) for _, label, err, image in rows)
    assert all("train[40%:50%]" in k for k, _, _, _ in rows)  # the tfds_id names its shard
    assert [(k, label) for k, label, _, _ in rows] == [(k, label) for k, label, _, _ in again]
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(rows, again))


def test_tfds_split_overrides_and_bad_specs():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        source = resolve_source("tfds:cats_vs_dogs",
                                split_specs=parse_split_option(("train=train[:80%]", "holdout=train[90%:]")))
        assert source.split_names == ["train", "validation", "test", "holdout"]
        assert source.describe()["splits"]["train"] == "train[:80%]"
        assert len(_elements(source.dataset("holdout", 8))) == 4
        with pytest.raises(DataError, match=r"split_specs='train=train\[:400%\]'"):
            resolve_source("tfds:cats_vs_dogs", split_specs={"train": "train[:400%]"})
    with pytest.raises(DataError, match="unknown TFDS dataset"):
        resolve_source("tfds:no_such_dataset_here")


def test_tfds_download_failure_is_one_clear_line(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'download.microsoft.com'\nmore details")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError) as err:
        resolve_source("tfds:cats_vs_dogs")
    message = str(err.value)
    assert "\n" not in message and "could not be downloaded" in message and "local folder" in message
    assert "Failed to resolve" in message


# --------------------------------------------------------------------------------------------
# tf.data options


def test_every_source_dataset_runs_without_the_autotune_thread(tmp_path):
    # Its iterator destructor can block for seconds at the end of every split and epoch (see
    # features/tfdata.py); options flow downstream, so the sources are where it must be off.
    from headstart.pipeline.training.labelled_dataset import labelled_dataset

    tfds = pytest.importorskip("tensorflow_datasets")
    folder = resolve_source(str(make_class_folders(tmp_path / "d", per_class=4)))
    with tfds.testing.mock_data(num_examples=4):
        hub = resolve_source("tfds:cats_vs_dogs")
        datasets = [folder.dataset("train", 16), folder.dataset("train", 16, shard=(0, 2)),
                    hub.dataset("test", 16), hub.dataset("test", 16, shard=(1, 2))]
    datasets.append(labelled_dataset(folder, "train", image_size=16, num_classes=2, batch_size=2, shuffle_seed=0))
    assert [ds.options().autotune.enabled for ds in datasets] == [False] * len(datasets)
    assert [k for k, _, _, _ in _elements(datasets[0])] == folder.keys("train")
