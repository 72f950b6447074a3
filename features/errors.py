"""Domain exceptions of the features package.

Each message is one line that names the file or option at fault. ``exit_code`` is what the CLI
exits with: 2 for bad input (the user can fix the command), 1 for failures at run time.
"""


class FeaturesError(Exception):
    """Base class of every error the features package raises on purpose."""

    exit_code = 2


class UnknownBackboneError(FeaturesError):
    """A backbone name that is not in the registry."""


class WeightsError(FeaturesError):
    """Weights that cannot be downloaded, found or loaded."""


class WeightsDownloadError(WeightsError):
    """``--weights imagenet`` could not be downloaded (no network, a proxy, a firewall): exit 1."""

    exit_code = 1


class ImageSizeError(FeaturesError):
    """An image size the backbone cannot take."""


class StoreError(FeaturesError):
    """A feature cache that is missing, foreign, incomplete or of an unknown format version."""


class StoreConfigMismatch(StoreError):
    """An existing cache was written with a different configuration.

    Attributes:
        field: the first field that differs (dotted, e.g. "source.sha256"), when known.
        partial: the cache is an interrupted run's ``.partial`` file.
    """

    def __init__(self, message: str, field: str | None = None, partial: bool = False):
        super().__init__(message)
        self.field, self.partial = field, partial


class StoreExistsError(StoreError):
    """A finished cache exists and ``overwrite`` was not given."""


class StoreInUseError(StoreError):
    """Another process holds the cache file open for writing.

    Exit code 75 (EX_TEMPFAIL), as a run directory another process writes: try again later.
    """

    exit_code = 75


class DiskFullError(StoreError):
    """The disk holding the cache has no room for the next batch; what is committed stays."""

    exit_code = 1


class NonFiniteFeaturesError(FeaturesError):
    """The backbone produced inf or NaN for an image (or float16 storage overflowed)."""

    exit_code = 1


class ShardError(StoreError):
    """Shard caches that do not form one complete set of one configuration, or cannot be indexed."""


class BadImagesError(FeaturesError):
    """More images were skipped than ``--max-bad`` allows, or one was bad under ``--strict``."""

    exit_code = 1


class TapError(FeaturesError):
    """A tap that does not name a cut of the backbone (``features/tap.py``).

    Attributes:
        field: the setting at fault ("tap"), so a caller can name its own flag or argument.
    """

    def __init__(self, message: str, field: str = "tap"):
        super().__init__(message)
        self.field = field
