"""The one exception type for mistakes a user can fix; the CLI prints its message as one line."""


class LordkitError(Exception):
    """A user-facing error: bad input, missing files, mismatched model and data, existing output.

    The CLI catches it and prints `error: <message>` on stderr with a non-zero exit status; the
    message must therefore be one line that says what is wrong and, where possible, what to do.
    """

    exit_code = 2
