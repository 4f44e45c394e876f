"""The one exception type that means "the user can fix this".

The CLI maps `UserError` to exit code 2 and a single line on stderr; anything else is a bug
(exit code 1, traceback with --debug).
"""


class UserError(Exception):
    """Bad input: a recipe, data file, path or flag the user can correct. The message is one line."""
