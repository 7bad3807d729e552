"""Atomic file and directory writes, their recovery after a crash, safe names and the base-dir layout."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lordkit.errors import LordkitError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is safe to use as a single path component, else raise LordkitError."""
    if not _NAME_RE.fullmatch(name or "") or name in (".", "..") or ".." in name:  # fullmatch: "$" lets "x\n" through
        raise LordkitError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only "
            "(no path separators, no leading dot, at most 128 characters)"
        )
    return name


def base_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The base dir holding data/, models/ and exports/: --base-dir, else $LORDKIT_HOME, else ~/lordkit."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LORDKIT_HOME")
    return Path(env).expanduser() if env else Path("~/lordkit").expanduser()


def data_dir(base: Path, name: str) -> Path:
    return base / "data" / validate_name(name, "data name")


def model_dir(base: Path, name: str) -> Path:
    return base / "models" / validate_name(name, "model name")


def export_dir(base: Path, name: str) -> Path:
    return base / "exports" / validate_name(name, "export name")


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------
# Temporary names. Everything a command writes is first built under a hidden name beside its
# target, `.<name>.<pid>@<host>-<random>.<kind>`, so that the next command can tell whose it is:
#   tmp      a file (or a video's frame dir) being written     partial  a directory being built
#   new      a complete directory, about to take the name (fallback replacement only)
#   old      the previous directory, moved aside (fallback replacement only)
#   group    the journal of several directories replaced as one unit (staged_dirs)
# A temporary name whose process is gone (same host, pid not running) is removed by `recover`,
# after a missing name has been restored from a complete `new` (preferred) or `old` copy. Only
# names of exactly this form, of this host, and of the file type their kind makes are ever
# touched: anything else in a directory (a user's `.notes.old-2024`, another host's names) stays.

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d{1,10})@(?P<host>[0-9a-f]{6})-(?P<rand>[a-z0-9_]{8})"
                      r"\.(?P<kind>tmp|partial|new|old|group)$")
_DIR_KINDS = ("partial", "new", "old")  # always directories; `group` is always a file, `tmp` either
GROUP_FORMAT = "lordkit-replace-group/1"


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_prefix(name: str) -> str:
    """The start of a temporary name for `name` owned by this process (mkstemp/mkdtemp add the rest:
    8 characters of [a-z0-9_] and the kind)."""
    return f".{name}.{os.getpid()}@{_host_tag()}-"


def _temp_name(name: str, kind: str) -> str:
    """A fresh temporary name of this process for `name` (the same form mkstemp/mkdtemp give)."""
    return f"{temp_prefix(name)}{os.urandom(4).hex()}.{kind}"


def _alive(pid: int) -> bool:
    """Whether process `pid` on this host runs; a zombie (dead, not yet reaped) counts as gone."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return True  # not a pid this module ever writes: never judged dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists, owned by someone else (or not a number the kernel takes)
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text()
        return fields[fields.rindex(")") + 2] not in "ZX"  # the state follows the parenthesised name
    return True


def _own_temps(parent: Path) -> list[tuple[re.Match, os.DirEntry]]:
    """Temporary names in `parent` made by lordkit on this host: the full form, this host's tag, and
    the file type the kind implies (never a link)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    host, found = _host_tag(), []
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or m["host"] != host:
            continue
        try:
            is_dir, is_file = entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False)
        except OSError:
            continue
        kind = m["kind"]
        if (kind in _DIR_KINDS and not is_dir) or (kind == "group" and not is_file) or not (is_dir or is_file):
            continue
        found.append((m, entry))
    return found


def _dead_temps(parent: Path) -> dict[str, list[tuple[str, Path]]]:
    """Temporary names in `parent` left by processes of this host that are gone: {name: [(kind, path)]}."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for m, entry in _own_temps(parent):
        if not _alive(int(m["pid"])):
            found.setdefault(m["name"], []).append((m["kind"], Path(entry.path)))
    return found


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def recover(parent: str | os.PathLike, only: str | None = None) -> list[str]:
    """Repair what dead processes left in `parent`: a replacement of several directories as one
    unit that had passed its commit point is finished (every name gets its new copy), a name
    missing after an interrupted fallback replacement gets its complete copy back (`new`, else
    `old`), then every dead temporary name is removed. Limited to the temporaries of `only` (and of
    the names replaced together with it) when given. Never touches a live process's names, another
    host's, or anything not named by lordkit; errors (a read-only dir) are ignored: the copy under
    the name is complete either way. Returns the names it restored."""
    parent = Path(parent)
    names = None if only is None else {only}
    restored: list[str] = []
    for _name, temps in _dead_temps(parent).items():  # groups first: they decide which copies are new
        for kind, journal in temps:
            if kind != "group":
                continue
            if only is not None and only not in {e["name"] for e in _read_group(journal) or []}:
                continue
            finished = _finish_journal(parent, journal)
            if finished is not None:
                group, changed = finished
                restored += changed
                if names is not None:
                    names |= set(group)
    dead = _dead_temps(parent)
    pending = {e["name"] for temps in dead.values() for kind, path in temps if kind == "group"
               for e in _read_group(path) or []}  # journals not finished now (a failed rename): kept with their copies
    for name, temps in dead.items():
        if (names is not None and name not in names) or name in pending:
            continue
        temps = [(kind, path) for kind, path in temps if kind != "group" or _read_group(path) is None]
        target = parent / name
        if not os.path.lexists(target):
            for kind in ("new", "old"):  # the newest complete copy wins
                copies = sorted((p for k, p in temps if k == kind), key=lambda p: p.stat().st_mtime, reverse=True)
                if copies:
                    with contextlib.suppress(OSError):
                        os.rename(copies[0], target)
                        restored.append(name)
                        temps = [(k, p) for k, p in temps if p != copies[0]]
                        break
        for _kind, path in temps:
            _remove(path)
    if restored:
        _fsync_dir(parent)
    return sorted(set(restored))


def recover_tree(path: str | os.PathLike, depth: int = 2) -> None:
    """`recover` for `path` within its parent, then inside it and its sub-directories, `depth` levels down."""
    path = Path(path)
    recover(path.parent, only=path.name)
    _recover_inside(path, depth)


def _recover_inside(path: Path, depth: int) -> None:
    if depth <= 0 or not path.is_dir() or path.is_symlink():
        return
    recover(path)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                _recover_inside(Path(entry.path), depth - 1)


# ----------------------------------------------------------------------------------------------
# Fault points: `LORDKIT_FAULT_KILL=<point>[:<n>]` makes the process SIGKILL itself the n-th time
# (default first) it reaches <point>, so tests can stop a replacement exactly between two steps.

_fault_counts: dict[str, int] = {}


def fault_point(point: str) -> None:
    spec = os.environ.get("LORDKIT_FAULT_KILL")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != point:
        return
    _fault_counts[point] = _fault_counts.get(point, 0) + 1
    if _fault_counts[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: give the modes a plain open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point("file-before-rename")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename is None or e.filename == tmp):
            e.filename = str(path)  # a write error names the file the user asked for
        raise


def temp_file(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside `path` (for writers that want a path, not a file object)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_input_file(path: str | os.PathLike, kind: str = "input") -> os.stat_result:
    """An input file must exist, be a regular file and be readable: one LordkitError line otherwise,
    before any slow work. `kind` names it in the message ("image", "video")."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LordkitError(f"{kind} not found: {path}") from None
    except OSError as e:
        raise LordkitError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from None
    if stat.S_ISDIR(st.st_mode):
        raise LordkitError(f"{path} is a directory, not {'an' if kind[:1] in 'aeiou' else 'a'} {kind} file")
    if not stat.S_ISREG(st.st_mode):
        raise LordkitError(f"{path} is not a regular file; give {'an' if kind[:1] in 'aeiou' else 'a'} {kind} file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise LordkitError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise LordkitError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from None
    return st


def check_can_create(path: str | os.PathLike) -> Path:
    """The nearest existing directory at or above `path` must be a writable directory on a writable
    filesystem (missing parents are created later): one LordkitError line otherwise, before any work."""
    path = Path(path)
    where = path.absolute()
    while not os.path.lexists(where) and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise LordkitError(f"cannot write {path}: {where} is a file, not a directory")
    with contextlib.suppress(OSError):
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            raise LordkitError(f"cannot write {path}: {where} is on a read-only filesystem")
    if not os.access(where, os.W_OK | os.X_OK):
        raise LordkitError(f"cannot write {path}: no permission to create files in {where}")
    return where


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LordkitError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LordkitError(f"{what} {path} is not valid JSON: {e}") from None


# ----------------------------------------------------------------------------------------------
# Directory replacement.

_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    C library, the kernel or the filesystem cannot, or when LORDKIT_NO_EXCHANGE is set."""
    global _renameat2
    if os.environ.get("LORDKIT_NO_EXCHANGE") or not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_fdcwd = -100
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory `tmp` under the name `final`, which always holds a complete copy.

    Where the filesystem can, the two are exchanged in one step and the old copy, now under the
    temporary name, is removed. Elsewhere: `tmp` is renamed to a `new` name (marking it complete),
    `final` to an `old` name, `new` to `final`; a crash between these steps leaves the name empty
    for a moment, and `recover` puts the newest complete copy back."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):
        fault_point("replace-exchanged")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    token = f"{temp_prefix(final.name)}{os.urandom(4).hex()}"
    new, old = final.with_name(f"{token}.new"), final.with_name(f"{token}.old")
    os.rename(tmp, new)
    fault_point("replace-marked-new")
    os.rename(final, old)
    fault_point("replace-moved-old")
    os.rename(new, final)
    fault_point("replace-renamed-new")
    shutil.rmtree(old, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a directory entry, not following a link; None if it is not there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_group(journal: Path) -> list[dict[str, Any]] | None:
    """The entries of a group journal: [{"name", "dev", "ino"}], or None if it is not one."""
    try:
        doc = json.loads(journal.read_text(encoding="utf-8"))
        entries = doc["entries"] if doc.get("format") == GROUP_FORMAT else None
        return [{"name": str(e["name"]), "dev": int(e["dev"]), "ino": int(e["ino"])} for e in entries]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _put_in_place(copy: Path, target: Path) -> None:
    """Put the complete directory `copy` under the name `target` and remove what was there. Used
    after a commit point only, so a crash inside is finished by the next `recover`."""
    if not os.path.lexists(target):
        os.rename(copy, target)
    elif _exchange(copy, target):
        shutil.rmtree(copy, ignore_errors=True)  # now the old copy
    else:
        old = target.with_name(_temp_name(target.name, "old"))
        os.rename(target, old)
        os.rename(copy, target)
        shutil.rmtree(old, ignore_errors=True)


def _finish_group(parent: Path, entries: list[dict[str, Any]]) -> list[str] | bool:
    """Roll a committed group replacement forward: each name gets the new copy the journal
    identifies (by device and inode, which renames keep), wherever the dead process left it.
    Returns the names changed, True if there was nothing to do, False if a rename failed (the
    journal is kept for the next try)."""
    changed = []
    for entry in entries:
        target, want = parent / entry["name"], (entry["dev"], entry["ino"])
        if _identity(target) == want:
            continue
        copies = [Path(e.path) for m, e in _own_temps(parent)
                  if m["name"] == entry["name"] and m["kind"] in _DIR_KINDS and _identity(Path(e.path)) == want]
        if not copies:
            continue  # the new copy is gone (removed by hand): nothing left to put in place
        try:
            _put_in_place(copies[0], target)
        except OSError:
            return False
        changed.append(entry["name"])
    if changed:
        _fsync_dir(parent)
    return changed or True


def _commit_group(pairs: list[tuple[Path, Path]]) -> Path:
    """Write the journal of a group replacement: every name with the device and inode of its
    complete new copy (renames keep both). Once it is on disk the group is committed: the next
    `recover` finishes whatever this process does not (_finish_group)."""
    final = pairs[0][1]
    journal = final.with_name(_temp_name(final.name, "group"))
    entries = []
    for tmp, final in pairs:
        dev, ino = _identity(tmp) or (-1, -1)
        entries.append({"name": final.name, "staged": tmp.name, "dev": dev, "ino": ino})
    atomic_write_json(journal, {"format": GROUP_FORMAT, "entries": entries})
    return journal


def _finish_journal(parent: Path, journal: Path) -> tuple[list[str], list[str]] | None:
    """Finish a dead process's committed group under an exclusive lock on its journal (two commands
    recovering at once must not both swap a name). (the group's names, the names changed), or None
    when the journal was finished by another process meanwhile or one of its renames failed."""
    import fcntl

    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _identity(journal) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            return None  # finished and removed by another recovery while this one waited
        entries = _read_group(journal)
        group = [e["name"] for e in entries or []]
        done = _finish_group(parent, entries) if entries is not None else True
        if done is False:
            return None
        _remove(journal)  # finished, or not a journal this module can read: nothing to finish
        _fsync_dir(parent)
        return group, done if isinstance(done, list) else []
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_dir(final: Path, force: bool = False, what: str = "output") -> Iterator[Path]:
    """Build a directory under a temporary name next to `final`, then put it in place (replace_dir).

    An existing `final` is refused unless `force`. Dead processes' leftovers of the same name are
    cleaned first; a failure removes this one's staging dir and leaves `final` as it was.
    """
    with staged_dirs([final], force=force, what=what) as (tmp,):
        yield tmp


@contextlib.contextmanager
def staged_dirs(finals: list[Path], force: bool = False, what: str = "output") -> Iterator[list[Path]]:
    """Build several directories (in one parent) under temporary names, then put them all in place
    as one unit: after a crash at any instant, once the next command's `recover` has run, either
    every name holds its old copy or every name its new one, never a mix (see _commit_group).

    Existing outputs are refused unless `force`. Dead processes' leftovers of these names are
    cleaned first; a failure before the commit point removes the staging dirs and leaves every
    name as it was.
    """
    finals = [Path(f) for f in finals]
    parent = finals[0].parent
    if any(f.parent != parent for f in finals) or len({f.name for f in finals}) != len(finals):
        raise ValueError("staged_dirs replaces distinct names of one directory")
    parent.mkdir(parents=True, exist_ok=True)
    for final in finals:
        recover(parent, only=final.name)
    for final in finals:
        if os.path.lexists(final) and not force:
            raise LordkitError(f"{what} {final} already exists; pass --force to replace it")
    tmps: list[Path] = []
    committed = False
    try:
        for final in finals:
            try:
                tmps.append(Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".partial", dir=parent)))
            except OSError as e:  # name the output, not the hidden staging name it could not create
                e.filename = str(final)
                raise
            os.chmod(tmps[-1], 0o777 & ~current_umask())  # mkdtemp makes 0700: an export must be readable by its service
        yield list(tmps)
        for tmp in tmps:
            _fsync_dir(tmp)
        fault_point("staged-complete")
        pairs = list(zip(tmps, finals))
        if len(pairs) == 1:
            replace_dir(*pairs[0])
        else:
            journal = _commit_group(pairs)
            committed = True  # from here on a failure is finished, not undone (here, else by the next `recover`)
            fault_point("group-committed")
            for i, (tmp, final) in enumerate(pairs):
                if i:
                    fault_point("group-one-replaced")
                replace_dir(tmp, final)
            fault_point("group-all-replaced")
            os.unlink(journal)
        _fsync_dir(parent)
    except OSError as e:  # name the file the user asked for, not the staging dir it was written in
        _abandon(parent, tmps, journal if committed else None)
        if e.filename is None:  # numpy and others raise it without one
            e.filename = str(finals[len(tmps) - 1] if tmps else finals[0])
        elif isinstance(e.filename, str):
            for tmp, final in zip(tmps, finals):
                if e.filename.startswith(str(tmp)):
                    e.filename = str(final) + e.filename[len(str(tmp)):]
                    break
        raise
    except BaseException:  # Ctrl-C, SIGTERM (lordkit.errors.Terminated), any other error
        _abandon(parent, tmps, journal if committed else None)
        raise


def _abandon(parent: Path, tmps: list[Path], journal: Path | None) -> None:
    """After a failure in staged_dirs: before the commit point remove the staging dirs (every name
    keeps its old copy); after it, finish the group now (every name gets its new copy) so that no
    mixed set is left even until the next command. What cannot be finished stays for `recover`."""
    if journal is None:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    entries = _read_group(journal)
    with contextlib.suppress(OSError):
        if entries is not None and _finish_group(parent, entries) is not False:
            os.unlink(journal)
            _fsync_dir(parent)
