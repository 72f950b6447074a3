"""The decompression-bomb check of ``image_header`` in TensorFlow ops, for graphs that run no Python.

An exported SavedModel's ``serve_bytes`` decodes what a client sends; without this, a 389 KB PNG of
20000×20000 pixels was decoded and classified (+1.2 GB of memory, 3.4 GB for four in one request)
although the CLI refuses the same file. ``check_pixels`` reads the dimensions from the encoded
bytes — PNG IHDR, JPEG SOFn (``tf.image.extract_jpeg_shape``), GIF logical screen and frame count,
BMP DIB header, WebP VP8/VP8L/VP8X — and fails the call before anything is decoded when the pixels
the decoder would hold exceed the limit: width × height, times the frames for a GIF (TensorFlow
decodes every frame onto the full canvas, even when only the first is returned).
"""

from __future__ import annotations

import tensorflow as tf

# Bytes of zeros appended before reading a header, so a short file reads zeros, not past its end.
_PAD = 32


def check_pixels(data: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An op that fails with "image too large: …" when ``data`` would decode to too many pixels.

    Args:
        data: scalar tf.string, one encoded image file.
        max_pixels: the limit (``image.MAX_IMAGE_PIXELS`` by default in the input path).

    Returns:
        The assertion; run the decode under ``tf.control_dependencies([it])``. Unknown formats
        pass (the decoder refuses them).
    """
    width, height, frames = image_dimensions(data)
    pixels = width * height * frames
    message = tf.cond(
        frames > 1,
        lambda: tf.strings.format("image too large: {}x{} ({} frames, {} pixels in all) exceeds the limit of {} "
                                  "pixels", (width, height, frames, pixels, max_pixels)),
        lambda: tf.strings.format("image too large: {}x{} exceeds the limit of {} pixels",
                                  (width, height, max_pixels)))
    return tf.debugging.Assert(pixels <= max_pixels, [message], name="max_image_pixels")


def image_dimensions(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(width, height, frames) as int64 scalars from an encoded image's header; zeros when unknown."""
    raw = tf.concat([tf.io.decode_raw(data, tf.uint8), tf.zeros((_PAD,), tf.uint8)], 0)
    b = tf.cast(raw, tf.int64)

    def le(at: int, size: int) -> tf.Tensor:  # little-endian unsigned integer at a byte offset
        return sum(b[at + i] * (1 << (8 * i)) for i in range(size))

    def be(at: int, size: int) -> tf.Tensor:
        return sum(b[at + i] * (1 << (8 * (size - 1 - i))) for i in range(size))

    def starts(magic: bytes, at: int = 0) -> tf.Tensor:
        return tf.reduce_all(tf.equal(raw[at:at + len(magic)], tf.constant(list(magic), tf.uint8)))

    one = tf.constant(1, tf.int64)
    zero = (tf.constant(0, tf.int64),) * 3
    branches = [
        (starts(b"\x89PNG\r\n\x1a\n"), lambda: (be(16, 4), be(20, 4), one)),
        (starts(b"\xff\xd8\xff"), lambda: _jpeg(data)),
        (tf.logical_or(starts(b"GIF87a"), starts(b"GIF89a")), lambda: (le(6, 2), le(8, 2), _gif_frames(b))),
        (tf.logical_and(starts(b"BM"), tf.size(raw) > 26 + _PAD), lambda: _bmp(b, le)),
        (tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)), lambda: _webp(raw, b, le)),
    ]
    result = zero
    for condition, dims in reversed(branches):  # the first match wins
        result = tf.cond(condition, dims, lambda r=result: r)
    return result


def _jpeg(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)  # (height, width, channels), no decode
    return shape[1], shape[0], tf.constant(1, tf.int64)


def _bmp(b: tf.Tensor, le) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    core = tf.equal(le(14, 4), 12)  # OS/2 core header: 16-bit sizes; else 32-bit, height signed

    def signed(v: tf.Tensor) -> tf.Tensor:
        return tf.abs(tf.where(v >= (1 << 31), v - (1 << 32), v))

    width = tf.where(core, le(18, 2), signed(le(18, 4)))
    height = tf.where(core, le(20, 2), signed(le(22, 4)))
    return width, height, tf.constant(1, tf.int64)


def _webp(raw: tf.Tensor, b: tf.Tensor, le) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    def is_chunk(fourcc: bytes) -> tf.Tensor:
        return tf.reduce_all(tf.equal(raw[12:16], tf.constant(list(fourcc), tf.uint8)))

    lossless = le(21, 4)
    width = tf.where(is_chunk(b"VP8X"), le(24, 3) + 1,
                     tf.where(is_chunk(b"VP8L"), lossless % (1 << 14) + 1, le(26, 2) % (1 << 14)))
    height = tf.where(is_chunk(b"VP8X"), le(27, 3) + 1,
                      tf.where(is_chunk(b"VP8L"), (lossless // (1 << 14)) % (1 << 14) + 1, le(28, 2) % (1 << 14)))
    return width, height, tf.constant(1, tf.int64)


def _gif_frames(b: tf.Tensor) -> tf.Tensor:
    """Image descriptors in a GIF, counted by walking its blocks and their data sub-blocks."""
    n = tf.size(b, out_type=tf.int64) - _PAD
    start = 13 + tf.where(b[10] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), b[10] % 8), 0)

    def at(i: tf.Tensor) -> tf.Tensor:
        return tf.gather(b, tf.minimum(i, n + _PAD - 1))

    def step(pos, frames, in_blocks, done):
        # Between blocks: the trailer ends the walk; an extension skips its label; an image
        # descriptor (10 bytes, a local colour table, the LZW code size) counts a frame. Inside a
        # block: skip one data sub-block, a zero-length one ends the block.
        kind = at(pos)
        packed = at(pos + 9)
        table = tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0)
        between = tf.logical_not(in_blocks)
        image = tf.logical_and(between, tf.equal(kind, 0x2C))
        extension = tf.logical_and(between, tf.equal(kind, 0x21))
        stop = tf.logical_and(between, tf.logical_not(tf.logical_or(image, extension)))
        size = at(pos)
        new_pos = tf.where(image, pos + 11 + table, tf.where(extension, pos + 2, pos + size + 1))
        return (new_pos, frames + tf.cast(image, tf.int64),
                tf.logical_or(image, tf.logical_or(extension, tf.logical_and(in_blocks, size > 0))),
                tf.logical_or(done, stop))

    _, frames, _, _ = tf.while_loop(
        lambda pos, frames, in_blocks, done: tf.logical_and(tf.logical_not(done), pos < n),
        step, (start, tf.constant(0, tf.int64), tf.constant(False), tf.constant(False)),
        maximum_iterations=tf.cast(n + 1, tf.int32))
    return tf.maximum(frames, 1)
