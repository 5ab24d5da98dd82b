"""Error types the engine raises; the UI and CLI show their messages verbatim."""


class LabError(Exception):
    """Base class of every expected failure: the message is written for the user."""


class InvalidArgument(LabError, ValueError):
    """An argument is out of range or of the wrong kind; the message echoes the bad value."""


class NotFound(LabError, KeyError):
    """A run, job, backbone or file that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsMissing(LabError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline)."""


class NetworkUnavailable(LabError):
    """A download was needed but the network cannot be reached."""


class DatasetError(LabError):
    """A dataset cannot be used: no classes, empty classes, nothing readable."""


class BadImage(LabError):
    """One image cannot be read; the message says which file and why."""


class UnsafeArchive(LabError):
    """An uploaded archive was refused (path escape, links, bomb, too big)."""


class Cancelled(LabError):
    """A long operation was cancelled by the user."""


class StoreUnavailable(LabError):
    """The run store's database cannot be opened, read or written (read-only, locked, damaged file)."""
