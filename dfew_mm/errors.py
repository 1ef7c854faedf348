"""User-facing errors: the CLI prints their message without a traceback and exits 2."""


class DfewMMError(Exception):
    """Base class for errors caused by input the user can fix."""


class DatasetError(DfewMMError):
    """A DFEW copy, split file or clip folder is missing or malformed."""


class ConfigError(DfewMMError):
    """A config file or override is invalid."""


class AssetError(DfewMMError):
    """A model file could not be found, downloaded or verified."""


class StoreError(DfewMMError):
    """A feature store is missing, incomplete or does not match the request."""


class WriteError(DfewMMError):
    """A file could not be written (disk full, no permission); the previous complete file is kept."""
