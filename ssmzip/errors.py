"""The one exception type ssmzip raises for bad compressed data or bad arguments."""


class SSMZipError(Exception):
    """Raised for corrupted, truncated or otherwise invalid ssmzip data.

    The message is always a single line that can be shown to a user as is.
    """
