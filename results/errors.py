"""The one exception type pgolf raises for bad input: the CLI prints it as one line, never a traceback."""


class PgolfError(Exception):
    """A problem the user can fix: the message names the file or key, the problem and the fix."""
