"""The one exception base of edgewatch, and the errors shared by every service."""


class EdgewatchError(Exception):
    """Base of every error edgewatch raises on purpose."""


class ConfigError(EdgewatchError):
    """A configuration file, variable or credential that cannot be used."""
