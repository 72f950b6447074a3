"""Decoding one image file: header checks first, then TF decode → RGB → ``tf.image.resize``.

Every stage (extraction, fine-tuning, evaluation, prediction) gets its pixels from
``decode_or_reason`` here, so an image is turned into numbers in exactly one way:

1. The format and dimensions are read from the file's first bytes in pure Python
   (``image_header.probe_image``: PNG IHDR, JPEG SOFn, GIF logical screen and frames, BMP DIB
   header, WebP VP8/VP8L/VP8X). Anything too large is
   refused *before* decoding, because a few hundred KB of PNG can decode to gigabytes.
2. A file that ends before its end marker (PNG IEND, JPEG EOI, GIF trailer, RIFF size, BMP pixel
   array) is refused as truncated; TF's own messages never name the problem or the file.
3. ``tf.io.decode_image(channels=3, expand_animations=False)`` decodes everything except palette
   BMPs (TF reads 8-bit BMPs as grayscale and rejects 1/4-bit ones, so those are decoded here) and
   animated WebPs (TF 2.21 corrupts the heap on some of them, so the first frame is cut out and
   decoded as a still WebP). Grayscale, RGBA (alpha dropped) and CMYK JPEGs come out RGB.
4. A JPEG's EXIF orientation (tag 0x0112) is applied, so a phone photo comes out as a person
   sees it, not as the sensor stored it (``EXIF_ORIENTATION``, recorded in cache configs).
5. ``tf.image.resize(..., method="bilinear")`` to (S, S) — no crop, no aspect preservation, as the
   Keras guide does — and values stay raw 0–255 float32.

The library never imports PIL; it is only a test dependency.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

from headstart.pipeline.data.image_header import (
    BadImage,
    ImageInfo,
    has_known_magic,
    probe_image,
    riff_chunks,
    unknown_reason,
)
from headstart.features.regular_file import NotRegularFile, open_regular
from headstart.pipeline.errors import DataError, OptionError

#: Decoding applies EXIF orientation; extraction records this in the cache config, so a cache of
#: sideways pixels (made before) is never resumed or reused as if it held upright ones.
EXIF_ORIENTATION = True

#: Largest image (width × height, summed over the frames a decoder must hold) decoded by default.
#: 50 M pixels is ~150 MB of RGB; every public function takes ``max_pixels`` to override it.
MAX_IMAGE_PIXELS = 50_000_000

# A file whose first bytes match no supported format is rejected after reading only this much.
_SNIFF_BYTES = 65536

def decode_or_reason(data: bytes, image_size: int, *, max_pixels: int | None = None) -> tuple[tf.Tensor, str]:
    """Decodes and resizes one image, never raising: a bad image gives zeros and a reason.

    Args:
        data: encoded image bytes.
        image_size: S, the output side.
        max_pixels: pixel limit checked from the header; ``MAX_IMAGE_PIXELS`` when None.

    Returns:
        (image float32 (S, S, 3) raw 0–255, reason): reason is "" for a good image; for a bad
        one the image is all zeros and reason says why (e.g. "truncated image").
    """
    try:
        return _decode_checked(data, image_size, max_pixels), ""
    except BadImage as e:
        reason = e.reason
    except Exception as e:  # noqa: BLE001 - a malformed header must not stop the whole dataset
        reason = f"corrupt image data ({type(e).__name__}: {str(e)[:120]})"
    return tf.zeros((image_size, image_size, 3), tf.float32), reason


def load_or_reason(path: str | Path, image_size: int, *, max_pixels: int | None = None) -> tuple[tf.Tensor, str]:
    """Like ``decode_or_reason`` for a file; an unreadable file is one more reason, never an error.

    Only the first 64 KiB of a file that matches no supported format are read.
    """
    try:
        data = _read_file(path)
    except BadImage as e:
        return tf.zeros((image_size, image_size, 3), tf.float32), e.reason
    return decode_or_reason(data, image_size, max_pixels=max_pixels)


def load_image(path: str | Path, image_size: int, *, max_pixels: int | None = None) -> np.ndarray:
    """Loads one image file the way every dataset does.

    Args:
        path: image file.
        image_size: S, the output side.
        max_pixels: pixel limit checked from the header; ``MAX_IMAGE_PIXELS`` when None.

    Returns:
        float32 (S, S, 3) raw 0–255.

    Raises:
        DataError: naming the file and the reason (missing, not an image, too large…).
    """
    _check_size(image_size)
    image, reason = load_or_reason(path, image_size, max_pixels=max_pixels)
    if reason:
        raise DataError(f"{path}: {reason}")
    return image.numpy()


def decode_and_resize(image_bytes, image_size: int, *, max_pixels: int | None = None) -> tf.Tensor:
    """The shared decode → RGB → ``tf.image.resize`` on encoded bytes.

    Eagerly (Python bytes or an eager tensor) a bad image raises DataError. Inside a graph
    (``tf.data.Dataset.map``, ``tf.function``) the same Python checks run through
    ``tf.py_function`` and a bad image fails the op with the reason as its message, so that
    graph and eager code produce identical pixels.

    Args:
        image_bytes: bytes, or a scalar tf.string tensor.
        image_size: S, the output side.
        max_pixels: pixel limit checked from the header; ``MAX_IMAGE_PIXELS`` when None.

    Returns:
        float32 (S, S, 3) raw 0–255.
    """
    _check_size(image_size)
    if isinstance(image_bytes, tf.Tensor) and tf.is_symbolic_tensor(image_bytes):
        def _run(b):
            image, reason = decode_or_reason(b.numpy(), image_size, max_pixels=max_pixels)
            if reason:
                raise ValueError(reason)  # becomes InvalidArgumentError carrying the reason
            return image

        image = tf.py_function(_run, [image_bytes], tf.float32)
        image.set_shape((image_size, image_size, 3))
        return image
    data = image_bytes.numpy() if isinstance(image_bytes, tf.Tensor) else bytes(image_bytes)
    image, reason = decode_or_reason(data, image_size, max_pixels=max_pixels)
    if reason:
        raise DataError(f"image: {reason}")
    return image


# ---------------------------------------------------------------------------------------------
# Decoding


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise OptionError.invalid("image_size", image_size, "must be a positive integer", shown=repr(image_size))


def _read_file(path: str | Path) -> bytes:
    try:
        # A named pipe or a device is refused unopened: opening a pipe would block for ever.
        with open_regular(path) as f:
            head = f.read(_SNIFF_BYTES)
            if not head:
                raise BadImage("empty file")
            if not has_known_magic(head):
                raise BadImage(unknown_reason(head))
            return head + f.read()
    except NotRegularFile as e:
        raise BadImage(e.strerror) from None
    except OSError as e:
        raise BadImage(f"cannot read file ({e.strerror or type(e).__name__})") from None


def _decode_checked(data: bytes, image_size: int, max_pixels: int | None) -> tf.Tensor:
    info = probe_image(data)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if info.pixels > limit:
        extra = f" ({info.frames} frames, {info.pixels} pixels in all)" if info.frames > 1 else ""
        raise BadImage(f"image too large: {info.width}x{info.height}{extra} exceeds the limit of {limit} pixels")
    if info.truncated:
        raise BadImage("truncated image")
    if info.format == "BMP" and info.bits <= 8:
        pixels = tf.constant(_decode_palette_bmp(data, info))
    else:
        encoded = _first_webp_frame(data) if info.animated else data
        try:
            pixels = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except tf.errors.OpError as e:
            raise BadImage(f"corrupt image data ({_tf_message(e)})") from None
    pixels = apply_orientation(pixels, info.orientation)
    return tf.image.resize(pixels, (image_size, image_size), method="bilinear")


def apply_orientation(pixels: tf.Tensor, orientation: int) -> tf.Tensor:
    """Turns (H, W, C) pixels stored with EXIF ``orientation`` into what a person sees.

    Phones store the sensor's pixels and the rotation in EXIF tag 0x0112; TF (and Keras'
    ``image_dataset_from_directory``) ignore it, so portrait photos came out sideways. The eight
    cases are PIL's ``ImageOps.exif_transpose`` (torchvision's ``apply_exif_orientation``).
    """
    if orientation in (5, 7):  # transpose / transverse
        pixels = tf.image.rot90(pixels, 2) if orientation == 7 else pixels
        return tf.transpose(pixels, (1, 0, 2))
    if orientation == 2:
        return tf.image.flip_left_right(pixels)
    if orientation == 4:
        return tf.image.flip_up_down(pixels)
    turns = {3: 2, 6: 3, 8: 1}.get(orientation, 0)  # counter-clockwise quarter turns
    return tf.image.rot90(pixels, turns) if turns else pixels


def _tf_message(error: Exception) -> str:
    # TF prefixes "{{function_node ...}} " and suffixes " [Op:DecodeImage]"; keep the middle.
    text = str(getattr(error, "message", error)).strip().splitlines()[0]
    if "}} " in text:
        text = text.split("}} ", 1)[1]
    return text.split(" [Op:", 1)[0].strip()[:160]


def _decode_palette_bmp(data: bytes, info: ImageInfo) -> np.ndarray:
    # TF's BMP decoder treats 8-bit images as grayscale (ignoring the palette) and rejects 1- and
    # 4-bit ones, so uncompressed palette BMPs are expanded here: (H, W, 3) uint8.
    dib = struct.unpack_from("<I", data, 14)[0]
    offset = struct.unpack_from("<I", data, 10)[0]
    height_signed = struct.unpack_from("<h" if dib == 12 else "<i", data, 20 if dib == 12 else 22)[0]
    w, h, bits = info.width, info.height, info.bits
    entry = 3 if dib == 12 else 4
    colours = struct.unpack_from("<I", data, 46)[0] if dib >= 40 else 0
    colours = colours or (1 << bits)
    start = 14 + dib
    palette = np.frombuffer(data[start:start + colours * entry], np.uint8)
    palette = palette[: len(palette) // entry * entry].reshape(-1, entry)[:, 2::-1]  # BGR(A) → RGB
    if len(palette) == 0:
        raise BadImage("corrupt image data (BMP palette missing)")
    stride = (w * bits + 31) // 32 * 4
    rows = np.frombuffer(data[offset:offset + stride * h], np.uint8).reshape(h, stride)
    if bits == 8:
        index = rows[:, :w]
    else:
        per_byte = 8 // bits
        shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)  # most significant pixel first
        index = ((rows[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(h, stride * per_byte)[:, :w]
    image = palette[np.minimum(index, len(palette) - 1)]
    return image[::-1] if height_signed > 0 else image  # positive height: rows stored bottom-up


def _first_webp_frame(data: bytes) -> bytes:
    # Wraps the first ANMF frame's VP8/VP8L chunk as a still WebP (its ALPH chunk is dropped:
    # alpha is discarded anyway).
    for fourcc, start, size in riff_chunks(data):
        if fourcc == b"ANMF":
            for sub, sub_start, sub_size in riff_chunks(data, start + 16, start + size):
                if sub in (b"VP8 ", b"VP8L"):
                    chunk = data[sub_start - 8:sub_start + sub_size + (sub_size & 1)]
                    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
            break
    raise BadImage("corrupt image data (animated WebP without a frame)")
