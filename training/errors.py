"""The training package's base error: the CLI prints these as one line instead of a traceback."""


class TrainingError(Exception):
    """A training job cannot start or continue; the message names the item and what to do."""
