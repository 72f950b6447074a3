"""An image file's header: format, dimensions and truncation from its first bytes, in pure Python.

``probe_image`` reads PNG IHDR, JPEG SOFn, GIF logical screen and frames, BMP DIB header and WebP
VP8/VP8L/VP8X, so ``headstart.pipeline.data.image`` can refuse an image that is too large (a few
hundred KB of PNG can decode to gigabytes) or truncated *before* decoding it. Formats recognised
by magic bytes but not decoded (TIFF, HEIC, SVG, …) are named in the reason, so the user knows to
convert them. No TensorFlow here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: File extensions of the formats decoded (JPEG, PNG, GIF, BMP, WebP): what ``predict`` looks for in a
#: folder, and what a label file's bare ids are tried with.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

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
        pixels: pixels the decoder must hold: canvas, times the frames of a GIF (each is decoded
            onto the whole canvas).
        truncated: the file ends before the format's end marker.
        bits: bits per pixel (BMP only; 0 elsewhere).
        animated: an animated WebP (decoded from its first frame).
        orientation: the JPEG's EXIF orientation, 1 (as stored) to 8; applied at decode.
    """

    format: str
    width: int
    height: int
    frames: int = 1
    pixels: int = 0
    truncated: bool = False
    bits: int = 0
    animated: bool = False
    orientation: int = 1


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
    raise BadImage(unknown_reason(data))



def has_known_magic(head: bytes) -> bool:
    """Whether the first bytes are those of a format ``probe_image`` reads."""
    return (head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))
            or (head.startswith(b"RIFF") and head[8:12] == b"WEBP"))


def unknown_reason(head: bytes) -> str:
    """The reason recorded for bytes of no supported format: the format's name when known."""
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


def _exif_orientation(segment: bytes) -> int:
    """EXIF orientation (1–8) from an APP1 payload, 1 when absent or unreadable.

    Layout: "Exif" and two zero bytes, a TIFF header (byte order "II"/"MM", 42, offset of IFD0),
    then IFD0's 12-byte entries (tag, type, count, value); orientation is tag 0x0112, a SHORT.
    """
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        ifd = struct.unpack_from(order + "I", tiff, 4)[0]
        for i in range(struct.unpack_from(order + "H", tiff, ifd)[0]):
            tag, kind = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:
                value = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)[0]
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _probe_jpeg(data: bytes) -> ImageInfo:
    pos, size, n, orientation = 2, None, len(data), 1
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
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(data[pos + 2:pos + length])
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
            return ImageInfo("JPEG", size[0], size[1], pixels=size[0] * size[1], truncated=truncated,
                             orientation=orientation)
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
    # TensorFlow decodes each frame onto the whole canvas: a few 1x1 frames on a 7000x7000 screen
    # hold frames × 49 M pixels, not 49 M.
    return ImageInfo("GIF", width, height, frames=max(frames, 1),
                     pixels=max(width * height * max(frames, 1), frame_pixels), truncated=truncated)


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


def riff_chunks(data: bytes, start: int = 12, end: int | None = None):
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
