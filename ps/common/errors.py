"""The one exception type for bad user input: the CLI prints its message and exits with status 2."""


class UserError(Exception):
    """A bad config value, flag, file or plug-in; the message names the field and the fix."""
