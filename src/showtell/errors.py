"""The one exception type the CLI turns into a one-line `error: ...` message."""


class ShowtellError(Exception):
    """A problem with the user's input (a file, a flag, a data set), stated in one line.

    The message names the file and the problem; the CLI prints it without a traceback.
    """
