"""Errors of the application layer. Each names the item that failed and says what to do."""


class WorkbenchError(Exception):
    """Base class of the errors the workbench's own modules raise."""


class GenerationError(WorkbenchError):
    """Generation was asked for something it cannot do: no prompts, a bad setting, an unreadable prompts file."""
