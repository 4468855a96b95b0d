"""Content-addressed image files under the home folder.

Files are named by the sha256 of their bytes, so a name from an import file never becomes a
path, and storing the same image twice stores it once.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
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
    decompression bomb never expands), then every pixel is decoded, and the file must end where
    the image ends: every PNG chunk with a good CRC up to IEND, a JPEG ending at its EOI marker,
    a WEBP whose RIFF size is the file's. Anything appended (a ZIP, say) is refused.

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
    except Image.DecompressionBombError:  # PIL's hard limit, met while reading the header
        raise MediaError(
            f"{what}: over {2 * Image.MAX_IMAGE_PIXELS} pixels exceeds the limit of {max_pixels} pixels"
        ) from None
    except Exception as e:  # noqa: BLE001 - a decoder fed hostile bytes raises many kinds; each is a bad image
        raise MediaError(f"{what}: not a readable image ({type(e).__name__}: {e})") from None
    _check_ends_with_the_image(data, fmt, what)
    digest = hashlib.sha256(data).hexdigest()
    path = f"{digest[:2]}/{digest}.{ALLOWED_FORMATS[fmt]}"
    return StoredImage(id=digest, path=path, width=width, height=height, format=fmt, nbytes=len(data))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
        if not data.endswith(b"\xff\xd9"):
            raise MediaError(f"{what}: the JPEG does not end with its end-of-image marker (truncated or with bytes appended)")
    elif fmt == "WEBP":
        (riff_size,) = struct.unpack("<I", data[4:8])
        if riff_size + 8 != len(data):
            raise MediaError(f"{what}: the WEBP's RIFF size {riff_size + 8} is not its file size {len(data)}")


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
