"""The error types raised at vaekit's boundaries: one clear message, never a traceback deep in a kernel."""

from __future__ import annotations


class VaekitError(Exception):
    """Base class of every error vaekit raises on purpose."""


class ConfigError(VaekitError, ValueError):
    """A config file, preset or `key=value` override is invalid (names the key and the valid keys)."""


class DataError(VaekitError, ValueError):
    """Input data is missing, unreadable or invalid (names the file and the problem)."""


class CapabilityError(VaekitError):
    """A model was asked for something it does not declare it can do (sample, a Gaussian posterior, codes...)."""


class CodecError(VaekitError):
    """A compressed file is damaged, truncated, or was made with other models or settings."""


class CheckpointError(VaekitError):
    """A checkpoint is corrupt, truncated or does not match the model it is loaded into."""


class RunDirError(VaekitError):
    """A run directory is missing, incomplete, or would be overwritten."""


class TrainingDivergedError(VaekitError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""
