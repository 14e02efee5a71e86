"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class ScansError(Exception):
    """Base class: bad input that the user can fix (config, data, model)."""


class ConfigError(ScansError):
    """A configuration value is invalid (caught before any model is loaded)."""


class DataError(ScansError):
    """A dataset is missing, malformed, or empty."""


class ModelError(ScansError):
    """A model cannot be loaded or a prompt cannot be formatted for it."""


class ArtifactError(ScansError):
    """An artifact that a stage needs is missing or damaged."""
