"""The one exception type for mistakes a user can fix, and the words for OS errors: the CLI prints one line."""

import errno


class LordkitError(Exception):
    """A user-facing error: bad input, missing files, mismatched model and data, existing output.

    The CLI catches it and prints `error: <message>` on stderr with a non-zero exit status; the
    message must therefore be one line that says what is wrong and, where possible, what to do.
    """

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that every `finally` and staging cleanup runs as for Ctrl-C."""

    exit_code = 143


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
