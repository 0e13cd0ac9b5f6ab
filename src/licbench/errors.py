"""Errors that name the file and the problem, for bad input of any kind."""


class LicbenchError(Exception):
    """Base class: every error the pipeline raises on purpose."""


class DownloadError(LicbenchError):
    """A source could not be fetched (network, HTTP status, missing mirror file)."""


class TransientDownloadError(DownloadError):
    """A download that still failed after its own retries for a reason that may
    pass (connection, time-out, HTTP 5xx/408/425/429, a short body): trying the
    whole stage again later may succeed. Stage commands exit with 75 on it."""


class DiskSpaceError(LicbenchError):
    """Not enough free space for what a stage is about to write; nothing was started."""


class ChecksumError(LicbenchError):
    """A file's sha256 differs from the published one; the file was not kept."""


class ImageError(LicbenchError):
    """An image that cannot be read or used (unreadable, truncated, too large)."""


class FormatError(LicbenchError):
    """A bitstream file that is not a valid licbench container."""


class CheckpointError(LicbenchError):
    """A checkpoint that cannot be loaded (missing, damaged, wrong content)."""


class PickledCodeError(CheckpointError):
    """A torch file (checkpoint, training state, weights) whose pickle would
    import and call code, not only rebuild tensors: refused without running it."""


class ConfigError(LicbenchError):
    """Invalid settings in params.yaml or on the command line."""


class ModelMismatchError(LicbenchError):
    """A bitstream decoded with other weights or another architecture than made it."""


class MaskError(LicbenchError):
    """A mask table that cannot be used (missing, damaged, made for another manifest,
    or lacking an image)."""


class TrainingError(LicbenchError):
    """Training cannot go on (a loss that is NaN or infinite); the last good state is kept."""


class ParamsError(ConfigError):
    """Settings refused before any work, one line each:
    ``<file>: <dotted.key>: <what is wrong>; <what is allowed>`` (licbench.config)."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)
