"""The one exception type the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (path, keys, checkpoint, option): the message names the fix."""
