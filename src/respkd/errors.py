"""The one exception type that the CLI turns into a single-line message and a non-zero exit."""


class RespkdError(Exception):
    """A problem with the user's input (config, data, checkpoint, command line): shown as one line, no traceback."""
