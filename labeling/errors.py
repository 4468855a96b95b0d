"""Errors raised by the labeling package. Each names the pair, annotator or scorer at fault."""


class LabelingError(Exception):
    """Base class of every error the labeling package raises."""

