"""Content-addressed image files under the home folder.

Files are named by the sha256 of their bytes, so a name from an import file never becomes a
path, and storing the same image twice stores it once.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from datastore.atomic import write_bytes
from datastore.errors import MediaError

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


@dataclass(frozen=True)
class StoredImage:
    """An image file in the media store.

    Attributes:
        id: sha256 hex digest of the file's bytes.
        path: path relative to the media folder.
        width, height: pixel size.
        format: PNG, JPEG or WEBP.
        nbytes: file size.
    """

    id: str
    path: str
    width: int
    height: int
    format: str
    nbytes: int


DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image (width x height) accepted by default: refused from its header, before decoding."""


def inspect_image(
    data: bytes, *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image"
) -> StoredImage:
    """Check that ``data`` is one whole still image of an allowed format; describe it without storing.

    The header's size is checked against ``max_pixels`` before any pixel is decoded (a
    decompression bomb never expands; PIL's own limit, ``2 * Image.MAX_IMAGE_PIXELS``, applies
    too, whatever ``max_pixels`` says), then every pixel is decoded, and the file must end where
    the image ends: every PNG chunk with a good CRC up to IEND; a JPEG's segments and scans
    walked up to its end-of-image marker; a WEBP whose RIFF size is the file's, holding only
    chunks the format defines, laid out to its last byte. Anything appended (a ZIP, say) is refused.

    Raises:
        MediaError: empty, too large, not an image, an unsupported format, animated, truncated,
            corrupt, or with bytes after the image.
    """
    if not data:
        raise MediaError(f"{what}: empty file")
    if len(data) > max_bytes:
        raise MediaError(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning; the limit that counts here is max_pixels, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                width, height = im.size
                if fmt not in ALLOWED_FORMATS:
                    raise MediaError(f"{what}: format {fmt} is not one of {sorted(ALLOWED_FORMATS)}")
                if width * height > max_pixels:
                    raise MediaError(
                        f"{what}: {width} x {height} pixels exceeds the limit of {max_pixels} pixels"
                    )
                if getattr(im, "is_animated", False):
                    raise MediaError(f"{what}: an animated image ({im.n_frames} frames); only still images are accepted")
                im.load()  # decodes every pixel: a truncated file fails here
    except MediaError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, met while reading the header
        raise MediaError(f"{what}: {_too_large_for_pil(data, max_pixels)}") from None
    except Exception as e:  # noqa: BLE001 - a decoder fed hostile bytes raises many kinds; each is a bad image
        raise MediaError(f"{what}: not a readable image ({type(e).__name__}: {e})") from None
    _check_ends_with_the_image(data, fmt, what)
    digest = hashlib.sha256(data).hexdigest()
    path = f"{digest[:2]}/{digest}.{ALLOWED_FORMATS[fmt]}"
    return StoredImage(id=digest, path=path, width=width, height=height, format=fmt, nbytes=len(data))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
"""JPEG markers without a length: TEM and the restart markers RST0-7."""
_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
"""JPEG start-of-frame markers (0xC4, 0xC8 and 0xCC are DHT, JPG and DAC)."""
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The marker after a scan's entropy-coded data: not a stuffed 0xFF00, a restart marker or a fill byte."""
_WEBP_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF", b"XMP "}


def _too_large_for_pil(data: bytes, max_pixels: int) -> str:
    """Why an image that PIL refused to open as a decompression bomb is refused, with its real size."""
    hard_limit = 2 * Image.MAX_IMAGE_PIXELS
    size = _header_size(data)
    named = f"{size[0]} x {size[1]} pixels" if size else f"over {hard_limit} pixels"
    if (size[0] * size[1] if size else hard_limit + 1) > max_pixels:
        return f"{named} exceeds the limit of {max_pixels} pixels"
    return f"{named} exceeds PIL's own limit of {hard_limit} pixels, which the limit of {max_pixels} does not lift"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header states it, or None when it cannot be found."""
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"\xff\xd8"):
            for marker, start, _ in _jpeg_segments(data, "image"):
                if marker in _JPEG_SOF:
                    height, width = struct.unpack(">HH", data[start + 1 : start + 5])
                    return width, height
        if data[8:16] == b"WEBPVP8X":  # only an extended WEBP's canvas can exceed PIL's limit
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    except (MediaError, struct.error):
        return None
    return None


def _jpeg_segments(data: bytes, what: str) -> Iterator[tuple[int, int, int]]:
    """(marker, payload offset, payload length) of each JPEG segment, the last one EOI (offset:
    just past it); a scan's entropy-coded data is skipped up to the next marker.

    Raises:
        MediaError: no SOI marker first, a segment that runs past the end, or no EOI marker.
    """
    if not data.startswith(b"\xff\xd8"):
        raise MediaError(f"{what}: corrupt JPEG (no start-of-image marker)")
    pos = 2
    while True:
        if pos >= len(data):
            raise MediaError(f"{what}: truncated JPEG (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise MediaError(f"{what}: corrupt JPEG (no marker at byte {pos})")
        while pos < len(data) and data[pos] == 0xFF:  # a marker may be preceded by fill bytes
            pos += 1
        if pos >= len(data):
            raise MediaError(f"{what}: truncated JPEG (no end-of-image marker)")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            yield marker, pos, 0
            return
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0x00, 0xD8):
            raise MediaError(f"{what}: corrupt JPEG (marker 0x{marker:02X} at byte {pos - 2})")
        (length,) = struct.unpack(">H", data[pos : pos + 2]) if pos + 2 <= len(data) else (0,)
        if length < 2 or pos + length > len(data):
            raise MediaError(f"{what}: corrupt JPEG (segment 0x{marker:02X} at byte {pos - 2} runs past the end)")
        yield marker, pos + 2, length - 2
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _JPEG_SCAN_END.search(data, pos)
            if found is None:
                raise MediaError(f"{what}: truncated JPEG (no end-of-image marker)")
            pos = found.start()


def _webp_chunks(data: bytes, what: str) -> Iterator[bytes]:
    """The kind of each chunk of a WEBP file, checked to fill its RIFF size, which must be the file's.

    Raises:
        MediaError: a RIFF size that is not the file's, a chunk the format does not define, or
            chunks that do not end exactly at the end of the file.
    """
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 != len(data):
        raise MediaError(f"{what}: the WEBP's RIFF size {riff_size + 8} is not its file size {len(data)}")
    pos = 12
    while pos < len(data):
        if pos + 8 > len(data):
            raise MediaError(f"{what}: corrupt WEBP ({len(data) - pos} bytes after its last chunk)")
        kind, size = struct.unpack("<4sI", data[pos : pos + 8])
        if kind not in _WEBP_CHUNKS:
            raise MediaError(f"{what}: a chunk {kind!r} at byte {pos}, which the WEBP format does not define")
        pos += 8 + size + size % 2  # a chunk of odd size is padded to an even one
        if pos > len(data):
            raise MediaError(f"{what}: corrupt WEBP (chunk {kind!r} runs past the end)")
        yield kind


def _check_ends_with_the_image(data: bytes, fmt: str, what: str) -> None:
    """Raise MediaError unless the file's container is whole and ends exactly where the image does."""
    if fmt == "PNG":
        pos = len(_PNG_SIGNATURE)
        while True:
            if pos + 8 > len(data):
                raise MediaError(f"{what}: truncated PNG (no IEND chunk)")
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            end = pos + 8 + length + 4
            if end > len(data):
                raise MediaError(f"{what}: truncated PNG (chunk {kind!r} runs past the end)")
            (crc,) = struct.unpack(">I", data[end - 4 : end])
            if zlib.crc32(data[pos + 4 : end - 4]) != crc:
                raise MediaError(f"{what}: corrupt PNG (bad CRC in chunk {kind!r})")
            pos = end
            if kind == b"IEND":
                break
        if pos != len(data):
            raise MediaError(f"{what}: {len(data) - pos} bytes after the PNG's IEND chunk")
    elif fmt == "JPEG":
        end = [offset for _, offset, _ in _jpeg_segments(data, what)][-1]  # the last segment is EOI
        if end != len(data):
            raise MediaError(f"{what}: {len(data) - end} bytes after the JPEG's end-of-image marker")
    elif fmt == "WEBP":
        kinds = list(_webp_chunks(data, what))
        if len(kinds) > 1 and kinds[0] != b"VP8X":
            raise MediaError(f"{what}: a simple WEBP (chunk {kinds[0]!r}) followed by more chunks {kinds[1:]}")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image``; the same pixels always give the same bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class MediaStore:
    """The media folder. Every path it hands out or accepts stays inside ``root``."""

    def __init__(self, root: Path, *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = root
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def inspect(self, data: bytes, *, what: str = "image") -> StoredImage:
        """:func:`inspect_image` with this store's limits."""
        return inspect_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, what=what)

    def put_bytes(self, data: bytes, *, what: str = "image", sync: bool = True) -> StoredImage:
        """Validate and store image bytes as they are; return their record. Idempotent.

        Args:
            sync: flush the file to disk before returning. Bulk writers pass False and call
                :func:`os.sync` once before they commit the rows that reference the files.
        """
        record = self.inspect(data, what=what)
        self.write_checked(record, data, sync=sync)
        return record

    def write_checked(self, record: StoredImage, data: bytes, *, sync: bool = True) -> None:
        """Store bytes that :func:`inspect_image` already described as ``record`` (no second decode)."""
        target = self.resolve(record.path)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_bytes(target, data, sync=sync)
            except OSError as e:
                raise MediaError(f"could not write {target}: {e}") from e

    def put_image(self, image: Image.Image) -> StoredImage:
        """Store a PIL image as PNG."""
        return self.put_bytes(encode_png(image))

    def resolve(self, relative: str) -> Path:
        """Absolute path of a file in the media folder.

        Raises:
            MediaError: the path is absolute or leads outside the media folder.
        """
        if Path(relative).is_absolute():
            raise MediaError(f"media path {relative!r} must be relative to the media folder")
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise MediaError(f"media path {relative!r} leads outside the media folder")
        return path

    def read_bytes(self, relative: str) -> bytes:
        return self.resolve(relative).read_bytes()

    def open_image(self, relative: str) -> Image.Image:
        """The stored image as an RGB PIL image."""
        with Image.open(self.resolve(relative)) as im:
            return im.convert("RGB")
