"""Decoding one image file: header checks first, then TF decode → RGB → ``tf.image.resize``.

Every stage (extraction, fine-tuning, evaluation, prediction) gets its pixels from
``decode_or_reason`` here, so an image is turned into numbers in exactly one way:

1. The format and dimensions are read from the file's first bytes in pure Python (PNG IHDR, JPEG
   SOFn, GIF logical screen and frames, BMP DIB header, WebP VP8/VP8L/VP8X). Anything too large is
   refused *before* decoding, because a few hundred KB of PNG can decode to gigabytes.
2. A file that ends before its end marker (PNG IEND, JPEG EOI, GIF trailer, RIFF size, BMP pixel
   array) is refused as truncated; TF's own messages never name the problem or the file.
3. ``tf.io.decode_image(channels=3, expand_animations=False)`` decodes everything except palette
   BMPs (TF reads 8-bit BMPs as grayscale and rejects 1/4-bit ones, so those are decoded here) and
   animated WebPs (TF 2.21 corrupts the heap on some of them, so the first frame is cut out and
   decoded as a still WebP). Grayscale, RGBA (alpha dropped) and CMYK JPEGs come out RGB.
4. ``tf.image.resize(..., method="bilinear")`` to (S, S) — no crop, no aspect preservation, as the
   Keras guide does — and values stay raw 0–255 float32.

The library never imports PIL; it is only a test dependency.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from headstart.pipeline.errors import DataError, OptionError

#: Largest image (width × height, summed over the frames a decoder must hold) decoded by default.
#: 50 M pixels is ~150 MB of RGB; every public function takes ``max_pixels`` to override it.
MAX_IMAGE_PIXELS = 50_000_000

# A file whose first bytes match no supported format is rejected after reading only this much.
_SNIFF_BYTES = 65536

# Formats recognised by magic bytes that we do not decode; named in the reason so the user knows
# to convert them rather than wonder why a "picture" was skipped.
_UNSUPPORTED_MAGIC = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"8BPS", "PSD"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"v/1\x01", "OpenEXR"), (b"#?RADIANCE", "HDR"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
)
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}


class BadImage(Exception):
    """A file that cannot become pixels; ``reason`` is the short text recorded for it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any decoding.

    Attributes:
        format: "JPEG", "PNG", "GIF", "BMP" or "WEBP".
        width, height: canvas size in pixels.
        frames: frames a decoder will hold (GIF decodes all of them; others 1).
        pixels: pixels the decoder must hold: canvas, or the sum over GIF frames if larger.
        truncated: the file ends before the format's end marker.
        bits: bits per pixel (BMP only; 0 elsewhere).
        animated: an animated WebP (decoded from its first frame).
    """

    format: str
    width: int
    height: int
    frames: int = 1
    pixels: int = 0
    truncated: bool = False
    bits: int = 0
    animated: bool = False


def probe_image(data: bytes) -> ImageInfo:
    """Reads format and dimensions from an image's bytes without decoding any pixel.

    Args:
        data: the file's bytes (at least its header; a partial file reports ``truncated``).

    Raises:
        BadImage: empty, not an image, an unsupported format, or a header too short or invalid.
    """
    if not data:
        raise BadImage("empty file")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _probe_png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _probe_jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _probe_gif(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _probe_webp(data)
    if data.startswith(b"BM") and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] in _BMP_DIB_SIZES:
        return _probe_bmp(data)
    raise BadImage(_unknown_reason(data))


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
        raise OptionError(f"--image-size must be a positive integer, got {image_size!r}")


def _read_file(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            if not head:
                raise BadImage("empty file")
            if not _has_known_magic(head):
                raise BadImage(_unknown_reason(head))
            return head + f.read()
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
    return tf.image.resize(pixels, (image_size, image_size), method="bilinear")


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
    for fourcc, start, size in _riff_chunks(data):
        if fourcc == b"ANMF":
            for sub, sub_start, sub_size in _riff_chunks(data, start + 16, start + size):
                if sub in (b"VP8 ", b"VP8L"):
                    chunk = data[sub_start - 8:sub_start + sub_size + (sub_size & 1)]
                    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
            break
    raise BadImage("corrupt image data (animated WebP without a frame)")


# ---------------------------------------------------------------------------------------------
# Header parsing (pure Python, first bytes only)


def _has_known_magic(head: bytes) -> bool:
    return (head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))
            or (head.startswith(b"RIFF") and head[8:12] == b"WEBP"))


def _unknown_reason(head: bytes) -> str:
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return f"unsupported format '{name}'"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return f"unsupported format '{_HEIF_BRANDS[head[8:12]]}'"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "unsupported format 'PNM'"
    start = head[:512].lstrip().lower()
    if start.startswith((b"<svg", b"<?xml")) and b"<svg" in head[:4096].lower():
        return "unsupported format 'SVG'"
    return "not an image"


def _probe_png(data: bytes) -> ImageInfo:
    if len(data) < 24:
        raise BadImage("truncated image")
    if data[12:16] != b"IHDR":
        raise BadImage("corrupt image data (PNG without IHDR)")
    width, height = struct.unpack_from(">II", data, 16)
    if width == 0 or height == 0:
        raise BadImage("corrupt image data (PNG of zero size)")
    # Walk the chunks (length, type, data, CRC) to the IEND marker: a missing one means truncation.
    pos, complete = 8, False
    while pos + 8 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        end = pos + 12 + length
        if end > len(data):
            break
        if data[pos + 4:pos + 8] == b"IEND":
            complete = True
            break
        pos = end
    return ImageInfo("PNG", width, height, pixels=width * height, truncated=not complete)


def _probe_jpeg(data: bytes) -> ImageInfo:
    pos, size, n = 2, None, len(data)
    while True:
        if pos >= n:
            raise BadImage("truncated image")
        if data[pos] != 0xFF:
            raise BadImage("corrupt image data (bad JPEG marker)")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise BadImage("truncated image")
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers carry no length
            continue
        if marker == 0xD9:
            raise BadImage("corrupt image data (JPEG ends before its frame header)")
        if pos + 2 > n:
            raise BadImage("truncated image")
        length = struct.unpack_from(">H", data, pos)[0]
        if length < 2:
            raise BadImage("corrupt image data (bad JPEG segment length)")
        if marker in _JPEG_SOF:
            if pos + 8 > n:
                raise BadImage("truncated image")
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if marker in (0xC3, 0xC7, 0xCB, 0xCF):
                raise BadImage("unsupported format 'JPEG (lossless)'")
            if marker in (0xC5, 0xC6, 0xCD, 0xCE):
                raise BadImage("unsupported format 'JPEG (hierarchical)'")
            if height == 0:
                raise BadImage("unsupported format 'JPEG (height given by DNL marker)'")
            if width == 0:
                raise BadImage("corrupt image data (JPEG of zero width)")
            size = (width, height)
        elif marker == 0xDA:  # start of scan: the compressed data follows
            if size is None:
                raise BadImage("corrupt image data (JPEG scan before its frame header)")
            # The end-of-image marker must come after the scan (an EXIF thumbnail has its own).
            truncated = data.rfind(b"\xff\xd9") < pos
            return ImageInfo("JPEG", size[0], size[1], pixels=size[0] * size[1], truncated=truncated)
        pos += length


def _probe_gif(data: bytes) -> ImageInfo:
    if len(data) < 13:
        raise BadImage("truncated image")
    width, height = struct.unpack_from("<HH", data, 6)
    pos, n = 13, len(data)
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    frames, frame_pixels, truncated = 0, 0, True
    # giflib decodes every frame into memory even when only the first is returned, so all frames
    # count towards the limit. Walk the blocks, skipping their data sub-blocks.
    while pos < n:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            truncated = False
            break
        if kind == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif kind == 0x2C:  # image descriptor
            if pos + 10 > n:
                break
            fw, fh = struct.unpack_from("<HH", data, pos + 5)
            packed = data[pos + 9]
            pos += 10
            if packed & 0x80:
                pos += 3 << ((packed & 7) + 1)
            pos += 1  # LZW minimum code size
            frames += 1
            frame_pixels += fw * fh
        else:
            raise BadImage(f"corrupt image data (GIF block 0x{kind:02x})")
        while pos < n and data[pos]:
            pos += data[pos] + 1
        pos += 1
    if width == 0 or height == 0:
        raise BadImage("corrupt image data (GIF of zero size)")
    if frames == 0 and not truncated:
        raise BadImage("corrupt image data (GIF without frames)")
    return ImageInfo("GIF", width, height, frames=max(frames, 1),
                     pixels=max(width * height, frame_pixels), truncated=truncated)


def _probe_bmp(data: bytes) -> ImageInfo:
    dib = struct.unpack_from("<I", data, 14)[0]
    if len(data) < (26 if dib == 12 else 34):
        raise BadImage("truncated image")
    if dib == 12:
        width, height, _, bits = struct.unpack_from("<HhHH", data, 18)
        compression = 0
    else:
        width, height, _, bits = struct.unpack_from("<iiHH", data, 18)
        compression = struct.unpack_from("<I", data, 30)[0]
    if width <= 0 or height == 0:
        raise BadImage("corrupt image data (BMP of zero size)")
    if compression in (1, 2):
        raise BadImage("unsupported format 'BMP (RLE)'")
    if (compression, bits) not in {(0, 1), (0, 4), (0, 8), (0, 24), (0, 32), (3, 32)}:
        raise BadImage(f"unsupported format 'BMP ({bits}-bit, compression {compression})'")
    height = abs(height)
    offset = struct.unpack_from("<I", data, 10)[0]
    stride = (width * bits + 31) // 32 * 4
    truncated = len(data) < offset + stride * height
    return ImageInfo("BMP", width, height, pixels=width * height, truncated=truncated, bits=bits)


def _riff_chunks(data: bytes, start: int = 12, end: int | None = None):
    # Yields (fourcc, payload start, payload size) of the RIFF chunks in [start, end).
    end = len(data) if end is None else min(end, len(data))
    pos = start
    while pos + 8 <= end:
        size = struct.unpack_from("<I", data, pos + 4)[0]
        yield data[pos:pos + 4], pos + 8, size
        pos += 8 + size + (size & 1)


def _probe_webp(data: bytes) -> ImageInfo:
    if len(data) < 30:
        raise BadImage("truncated image")
    truncated = len(data) < 8 + struct.unpack_from("<I", data, 4)[0]
    fourcc = data[12:16]
    if fourcc == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise BadImage("corrupt image data (bad VP8 frame header)")
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
        animated = False
    elif fourcc == b"VP8L":
        if data[20] != 0x2F:
            raise BadImage("corrupt image data (bad VP8L signature)")
        bits = struct.unpack_from("<I", data, 21)[0]
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        animated = False
    elif fourcc == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        animated = bool(data[20] & 0x02)
    else:
        raise BadImage(f"corrupt image data (WebP chunk {fourcc!r})")
    if width == 0 or height == 0:
        raise BadImage("corrupt image data (WebP of zero size)")
    return ImageInfo("WEBP", width, height, pixels=width * height, truncated=truncated, animated=animated)
