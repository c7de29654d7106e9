"""The file-system toolkit every writer uses: all-or-nothing files and directories, a cross-process lock.

A reader (another rank, a resuming run, evaluate's glob) sees the old version of a path or the new one,
never half of one: outputs are built under a hidden temporary name beside their final path, fsynced,
and renamed into place. Temporary names never match the final name's pattern (`*.ckpt`, `*.gguf`), so
nothing that lists outputs picks one up, and `remove_debris` clears those a killed process left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"  # .<name>.tmp-<pid>: a path being written
OLD_MARK = ".old-"  # .<name>.old-<pid>: the previous version, while the new one is renamed in
DEL_MARK = ".del-"  # .<name>.del-<pid>: a path being deleted
MARKS = (TMP_MARK, OLD_MARK, DEL_MARK)


def _hidden(path: Path, mark: str) -> Path:
    return path.with_name(f".{path.name}{mark}{os.getpid()}")


def remove(path: Path) -> None:
    """Delete a file, link or directory tree; nothing when it does not exist."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_atomically(path: Path) -> None:
    """Delete `path` so that no reader ever sees it half-deleted: rename it out of its name, then remove."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    doomed = _hidden(path, DEL_MARK)
    remove(doomed)
    path.rename(doomed)
    fsync_dir(path.parent)
    remove(doomed)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file and directory of a tree, to disk."""
    paths = [path]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            paths += [Path(root) / name for name in (*files, *dirs)]
    for item in reversed(paths):  # files before the directories that hold them
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux: /proc/self/status);
    elsewhere set and put back at once."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_modes(path: Path) -> None:
    """Give a file, or every file and directory of a tree, the permissions a file the user creates gets:
    0666 (0777 for directories and executables) less the umask. Writers that go through a temporary file of
    their own (safetensors' save_file: 0600) would otherwise publish files other users cannot read, unlike the
    rest of the same checkpoint."""
    mask = umask()
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            paths += [Path(root) / name for name in (*files, *dirs)]
    for item in paths:
        st = item.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
        if stat.S_IMODE(st.st_mode) != full & ~mask:
            os.chmod(item, full & ~mask)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` for the caller to create (a file or a directory); when the
    block succeeds its permissions are made a normal file's (the umask's: `_default_modes`), it is fsynced and
    renamed onto `final`, otherwise removed. A file replaces the old one in one rename; a directory cannot,
    so the old one is renamed aside first and put back if the swap fails (a kill between the two renames
    leaves it as `.<name>.old-<pid>`, which `remove_debris` restores).
    One writer per path at a time: temporary names carry the process id, not the thread."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden(final, TMP_MARK)
    remove(tmp)
    try:
        yield tmp
        _default_modes(tmp)
        _fsync_tree(tmp)
        if final.is_dir() and not final.is_symlink():
            old = _hidden(final, OLD_MARK)
            remove(old)
            final.rename(old)
            try:
                tmp.rename(final)
            except BaseException:
                old.rename(final)
                raise
            remove(old)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            remove(tmp)
        raise


def check_writable(path: str | Path, what: str) -> Path:
    """Before long work: `path` can be created or replaced (its directory exists or can be made and takes a
    file; `path` itself is not a directory). One line naming `what` (an option) otherwise."""
    from tinyllama.core.cli import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write in {path.parent} ({exc.strerror}); choose another path") from None
    return path


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def is_temporary(path: str | Path) -> bool:
    """A name this module gives to a path being written, replaced or deleted (never a finished output)."""
    name = Path(path).name
    return name.startswith(".") and any(
        found and base and pid.isdigit() for base, found, pid in (name[1:].rpartition(m) for m in MARKS)
    )


def remove_debris(directory: str | Path) -> list[Path]:
    """Remove what killed writers left in `directory` (temporary, old and half-deleted paths); returns them.
    A leftover `.old-` whose final path is missing (a kill between the two renames) is put back instead."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cleaned = []
    for path in directory.iterdir():
        name = path.name
        if not name.startswith("."):
            continue
        for mark in MARKS:
            base, found, pid = name[1:].rpartition(mark)
            if not (found and base and pid.isdigit()):
                continue
            if int(pid) != os.getpid() and _alive(int(pid)):
                break  # a live writer's
            final = directory / base
            if mark == OLD_MARK and not (final.exists() or final.is_symlink()):
                path.rename(final)
            else:
                remove(path)
            cleaned.append(path)
            break
    return cleaned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_held: dict[Path, IO[str]] = {}  # locks this process holds for a whole run (hold_lock)


def hold_lock(path: str | Path) -> bool:
    """Take an exclusive lock on `path` for the rest of this process (or until `release_lock`); False at
    once when another process holds it. The pid of the holder is written into the file, for messages."""
    path = Path(path).resolve()
    release_lock(path)  # this process may take its own lock again (a test running two trainers in turn)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[path] = handle
    return True


def release_lock(path: str | Path) -> None:
    handle = _held.pop(Path(path).resolve(), None)
    if handle is not None:
        handle.close()  # closing the file releases the lock


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block; yields True.
    With blocking=False, yields False at once when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
