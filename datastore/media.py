"""Content-addressed image files under the home folder.

Files are named by the sha256 of their bytes, so a name from an import file never becomes a
path, and storing the same image twice stores it once.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

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


def inspect_image(data: bytes, *, max_bytes: int, what: str = "image") -> StoredImage:
    """Check that ``data`` is one whole image of an allowed format; describe it without storing.

    Raises:
        MediaError: empty, too large, not an image, an unsupported format, or truncated.
    """
    if not data:
        raise MediaError(f"{what}: empty file")
    if len(data) > max_bytes:
        raise MediaError(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()  # decodes every pixel: a truncated file fails here
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{what}: not a readable image ({e})") from e
    if fmt not in ALLOWED_FORMATS:
        raise MediaError(f"{what}: format {fmt} is not one of {sorted(ALLOWED_FORMATS)}")
    digest = hashlib.sha256(data).hexdigest()
    path = f"{digest[:2]}/{digest}.{ALLOWED_FORMATS[fmt]}"
    return StoredImage(id=digest, path=path, width=width, height=height, format=fmt, nbytes=len(data))


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image``; the same pixels always give the same bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class MediaStore:
    """The media folder. Every path it hands out or accepts stays inside ``root``."""

    def __init__(self, root: Path, *, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes

    def put_bytes(self, data: bytes, *, what: str = "image", sync: bool = True) -> StoredImage:
        """Validate and store image bytes as they are; return their record. Idempotent.

        Args:
            sync: flush the file to disk before returning. Bulk writers pass False and call
                :func:`os.sync` once before they commit the rows that reference the files.
        """
        record = inspect_image(data, max_bytes=self.max_bytes, what=what)
        self.write_checked(record, data, sync=sync)
        return record

    def write_checked(self, record: StoredImage, data: bytes, *, sync: bool = True) -> None:
        """Store bytes that :func:`inspect_image` already described as ``record`` (no second decode)."""
        target = self.resolve(record.path)
        if not target.exists():
            write_atomic(target, data, sync=sync)

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


def write_atomic(target: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``target`` so that a reader or a crash never sees a partial file.

    Raises:
        MediaError: the write failed (e.g. the disk is full); nothing is left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise MediaError(f"could not write {target}: {e}") from e
