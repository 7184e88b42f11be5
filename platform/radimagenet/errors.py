"""Errors the CLI reports as one clear line (no traceback) instead of a crash."""


class RadImageNetError(Exception):
    """Base class: something the user can fix (configuration, input, environment)."""


class ConfigError(RadImageNetError, ValueError):
    """A configuration value, argument or input file is wrong."""


class StorageError(RadImageNetError):
    """S3 is unreachable, refuses our credentials, or lacks a bucket or object we need."""


class StackError(RadImageNetError):
    """The embedded local stack could not be started, checked or stopped."""
