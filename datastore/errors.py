"""Errors raised by the store. Every one names the item that failed."""


class StoreError(Exception):
    """Base class of every error the store raises."""


class StoreBusyError(StoreError):
    """The store stayed locked by another process for longer than the lock timeout."""


class MediaError(StoreError):
    """An image was rejected: not an image, truncated, too large, or a path outside the media folder."""


class ImportFormatError(StoreError):
    """An import file is malformed. Names the row and column when one is at fault."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.row = row
        self.column = column


class NotFoundError(StoreError):
    """A named item (dataset version, pair, model, ...) does not exist."""


class DuplicateJudgmentError(StoreError):
    """An annotator's answer to a pair was already accepted by the judgment inbox; nothing was added."""
