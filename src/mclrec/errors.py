"""Exception types whose messages are shown to users as they are."""


class MclrecError(Exception):
    """A user-facing error: bad input, bad config, missing file; the CLI prints it and exits 1."""


class ConfigError(MclrecError):
    """params.yaml (or a CLI override) is invalid; the message names the file and key."""


class DataError(MclrecError):
    """A raw or processed data file is invalid; the message names the file and line."""
