"""Typed errors: the CLI prints their message without a traceback and exits 2."""


class CxrError(Exception):
    """Base class of every error covid-cxr raises on purpose."""


class DataError(CxrError):
    """A data source cannot be read or is unusable."""


class ImageError(DataError):
    """One image file cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ConfigError(CxrError):
    """A preset, config file or override is invalid."""


class BundleError(CxrError):
    """A bundle is missing, corrupt or of an unknown format version."""


class TrainingInterrupted(CxrError):
    """Training stopped by Ctrl-C; `bundle` is the bundle written from the best checkpoint so far, if any."""

    def __init__(self, epoch: int, max_epochs: int, bundle: object = None) -> None:
        super().__init__(f"interrupted at epoch {epoch}/{max_epochs}")
        self.epoch = epoch
        self.max_epochs = max_epochs
        self.bundle = bundle
