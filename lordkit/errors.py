"""The exception types for mistakes a user can fix, and the words for OS errors.

Every front end (the CLI, the HTTP service, the Python API) tells these apart by type, never by
their text: the CLI prints one `error:` line and exits with `exit_code`, the service answers with
the status its table gives each type. Advice on what to do differently is a `Hint`, which each
front end words for itself (a flag for the CLI, a form field for HTTP, an argument for Python), so
library messages never name one front end's options.
"""

from __future__ import annotations

import enum
import errno


class Hint(enum.Enum):
    """Advice a front end words in its own terms: see cli.common.CLI_HINTS, serve's HTTP_HINTS."""

    NO_ALIGN = "no_align"  # the inputs may be aligned crops already: turn face alignment off
    GIVE_CONTENT = "give_content"  # how to name a content image
    GIVE_CLASS = "give_class"  # how to name a class: a reference photo, a class id or a class name


# The Python API's wording (str(error)); the CLI and the HTTP service have their own tables.
PYTHON_OPTIONS = {"paste_back": "paste_back=True", "all_faces": "all_faces=True", "no_align": "align=False"}
PYTHON_HINTS = {
    Hint.NO_ALIGN: "; pass align=False for pre-aligned images",
    Hint.GIVE_CONTENT: ": pass a photo path or an image array",
    Hint.GIVE_CLASS: ": a reference photo, a class id (int) or a class name (str)",
}


class LordkitError(Exception):
    """A user-facing error: bad input, missing files, mismatched model and data, existing output.

    `message` is one line that says what is wrong; `hint`, where set, is advice that each front end
    words for itself and appends. Where the message is about options, `options` names them in a
    neutral vocabulary ("paste_back", "all_faces", "no_align") and the message holds {0}, {1}, ...
    where each front end puts its own name for them (`--paste-back`, `paste_back`, `paste_back=True`).
    `str()` gives the Python API's wording.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, hint: Hint | None = None, options: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.options = tuple(options)

    def words(self, hints: dict[Hint, str], option_names: dict[str, str] | None = None) -> str:
        """The message in a front end's words: its names for the options, its wording of the hint."""
        text = self.message
        if self.options:
            names = option_names or {}
            text = text.format(*(names.get(o, o) for o in self.options))
        return text + (hints.get(self.hint, "") if self.hint is not None else "")

    def __str__(self) -> str:
        return self.words(PYTHON_HINTS, PYTHON_OPTIONS)


class BadInput(LordkitError):
    """An input the user gave cannot be used: unreadable or undecodable file, wrong shape or value,
    options that contradict each other, a request with nothing to do."""


class NoFace(BadInput):
    """A face model found no face where one is needed."""


class TooLarge(BadInput):
    """An input above a size limit (pixels, memory, a request's pair count)."""


class UnknownClass(BadInput):
    """A class id or name that the model's class bank does not have."""


class Unsupported(LordkitError):
    """The model or export cannot do what was asked (paste-back with a non-face model, a precision
    whose files the export lacks)."""


class OutputExists(LordkitError):
    """An output that is already there, without --force."""


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that every `finally` and staging cleanup runs as for Ctrl-C."""

    exit_code = 143


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that stopped a long job which kept what it had done: `partial` says what
    (for a video, its VideoResult: frames written, finalised outputs). Raised from the interruption."""

    def __init__(self, partial: object, cause: KeyboardInterrupt):
        super().__init__(str(cause))
        self.partial = partial
        self.terminated = isinstance(cause, Terminated)
        self.exit_code = Terminated.exit_code if self.terminated else 130


_OS_ERRORS = {  # errno -> what the user reads
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the filesystem or the process's file-size limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only filesystem",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error (failing disk or connection?)",
    errno.EMFILE: "too many open files",
    errno.ENOMEM: "out of memory",
}


def os_error_line(e: OSError) -> str:
    """One line for an OS error: what failed, on which path, in words a user can act on."""
    what = _OS_ERRORS.get(e.errno or -1) or (e.strerror or type(e).__name__)
    where = e.filename if e.filename is not None else None
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    return f"{where}: {what}" if where else what


def errno_in_message(text: str) -> int | None:
    """The errno a library named only in its message text (torch's C++ writers, onnx's serializer)."""
    lowered = text.lower()
    for code, needle in ((errno.ENOSPC, "no space left"), (errno.EFBIG, "file too large"),
                         (errno.EDQUOT, "quota exceeded"), (errno.EROFS, "read-only file system"),
                         (errno.EACCES, "permission denied")):
        if needle in lowered:
            return code
    return None
