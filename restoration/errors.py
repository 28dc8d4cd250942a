"""Errors for expected mistakes: the entry point prints their message as one line, no traceback."""

__all__ = ["ConfigError", "DataError", "RestorationError", "TrainingDiverged"]


class RestorationError(Exception):
    """Base class of the errors a user can fix (bad config, bad data); the message says how."""


class ConfigError(RestorationError, ValueError):
    """A config value is missing, out of range or inconsistent with another one."""


class DataError(RestorationError, ValueError):
    """An image file or dataset folder is missing, unreadable or not laid out as expected."""


class TrainingDiverged(RestorationError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
