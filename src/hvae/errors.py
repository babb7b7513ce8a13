"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class HVAEError(Exception):
    """Base class: the message names the file or key and what was expected."""


class ConfigError(HVAEError):
    """params.yaml is missing, malformed or out of range."""


class DataError(HVAEError):
    """A dataset file is missing, corrupt or not what it claims to be."""


class TrainingError(HVAEError):
    """Training broke down (a non-finite loss)."""


class TrackingError(HVAEError):
    """The MLflow store or the run record is unusable."""


class RegistryError(HVAEError):
    """A registered model, version, alias or version metric is missing, or a gate failed."""


class ServerError(HVAEError):
    """A server the command started (the MLflow UI, a model server) stopped, or never served."""
