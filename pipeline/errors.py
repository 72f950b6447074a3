"""Domain exceptions of the pipeline package; only ``cli.py`` turns them into click errors.

``exit_code`` 2 marks input the user can fix (a path, an option, a config file); 1 marks a failure
at run time (a parity check); 75 a directory or cache another process is writing (try again later).
"""


class HeadstartError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    exit_code = 2


class OptionError(HeadstartError):
    """An option value or combination of options that cannot work."""


class DataError(HeadstartError):
    """A source, split spec or image that cannot be read."""


class RunDirError(HeadstartError):
    """A run directory that is missing, foreign, incomplete or would be overwritten."""


class RunDirBusyError(RunDirError):
    """Another process is writing the directory (it holds the directory's lock).

    Exit code 75 (EX_TEMPFAIL of sysexits.h): nothing is wrong with the command; run it again once
    the other process has finished.
    """

    exit_code = 75


class ParityError(HeadstartError):
    """The assembled model disagrees with the head on cached features."""

    exit_code = 1


class OutputError(HeadstartError):
    """An output that cannot be written: a read-only, full or forbidden file or directory."""

    exit_code = 1


class NonFiniteLossError(HeadstartError):
    """A training or validation loss became NaN or infinite; the run stops and keeps nothing."""

    exit_code = 1
