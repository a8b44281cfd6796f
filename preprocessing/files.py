"""Atomic file writes for caches that several runs share, and the error a failed write raises.

Every writer here goes through a temporary sibling whose name carries the pid, then a rename: a
reader sees the old file or the new one, never half of one, and two processes building the same
cache entry at once never touch each other's temporary (with one shared name, one run's rename
took the other's file away mid-write). On any failure the temporary is removed; an OS-level write
failure (a full disk, a quota, a read-only folder) becomes a `StorageError` naming the file.
"""
from __future__ import annotations

import errno as _errno
import json
import os
import shutil
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

# Write failures that are the user's storage, not a bug: reported in one line, naming the path.
STORAGE_ERRNOS = {_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG, _errno.EROFS, _errno.EACCES, _errno.EPERM}


class StorageError(OSError):
    """A file could not be written (disk full, quota, read-only, permission), or one read back is
    corrupt or truncated. `str()` is a complete one-line message naming the file, for the user;
    `filename` is that file, `errno` the cause (ENOSPC, ...; EIO for a corrupt file).

    `mmrec` reports it as a user error (`mmrec: error: <message>`, exit 2). It lives here because
    `preprocessing` never imports from `mmrec`."""

    def __init__(self, message: str, errno: int | None = None, filename: str | os.PathLike | None = None):
        super().__init__(errno, message)
        self.message = message
        self.filename = None if filename is None else str(filename)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):   # picklable across worker processes with its own signature
        return (type(self), (self.message, self.errno, self.filename))

    @classmethod
    def writing(cls, error: BaseException, path: str | os.PathLike, hint: str = "",
                code: int | None = None) -> "StorageError":
        """`no space left on device writing <path> (N MiB free there)[; hint]`, from the failure
        of a write (`code`: its errno as `storage_errno` found it)."""
        code = storage_errno(error) if code is None else code
        if code and code != _errno.EIO:
            reason = os.strerror(code)
            text = f"{reason[:1].lower() + reason[1:]} writing {path}"
        else:
            text = f"could not write {path} ({_first_line(error)})"
        free = _free_bytes(Path(path))
        if free is not None and code in (_errno.ENOSPC, _errno.EDQUOT, _errno.EIO):
            text += f" ({free / 2 ** 20:.1f} MiB free there)"
        return cls(text + (f"; {hint}" if hint else ""), code, path)


class CorruptFileError(StorageError):
    """A file read back is corrupt or truncated (a checkpoint, a model); the message says which."""

    def __init__(self, message: str, errno: int | None = _errno.EIO, filename=None):
        super().__init__(message, errno, filename)


# What torch, safetensors, numpy and pyarrow raise when a disk fills or a quota is hit: often
# not an OSError with an errno (torch: RuntimeError "unexpected pos"; numpy: OSError("N requested
# and M written"); safetensors: SafetensorError "... (os error 28)").
_PATTERNS = (("no space left on device", _errno.ENOSPC), ("os error 28", _errno.ENOSPC),
             ("errno 28", _errno.ENOSPC), ("disk quota exceeded", _errno.EDQUOT),
             ("os error 122", _errno.EDQUOT), ("read-only file system", _errno.EROFS),
             ("os error 30", _errno.EROFS), ("file write failed", _errno.EIO),
             ("unexpected pos", _errno.EIO), ("requested and", _errno.EIO))
LOW_SPACE = 16 * 2 ** 20   # a failed write with less free space than this: the disk is full


def storage_errno(error: BaseException, path: str | os.PathLike | None = None) -> int | None:
    """The storage cause of a failed write (ENOSPC, EDQUOT, EROFS, EACCES, ...; EIO for a short
    or failed write of unknown cause), or None when it does not look like one (a bug: re-raise it).
    `path`: where the write went; a failure while that disk is (nearly) full counts as ENOSPC."""
    if isinstance(error, StorageError):
        return error.errno
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return error.errno
    text = str(error).lower()
    code = next((c for pattern, c in _PATTERNS if pattern in text), None)
    io_like = isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError"
    if code in (None, _errno.EIO) and path is not None and io_like:
        free = _free_bytes(Path(path))
        if free is not None and free < LOW_SPACE:
            return _errno.ENOSPC
    return code


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def storage_failure(error: BaseException, path: str | os.PathLike, hint: str = "",
                    where: str | os.PathLike | None = None) -> BaseException:
    """What to raise for a failed write of `path`: a StorageError if it is a storage fault
    (`where`: the file or folder actually written, e.g. a temporary, for the free-space check),
    else the error itself. Call it before removing the temporary (its size counts as used)."""
    if isinstance(error, StorageError):
        return error
    code = storage_errno(error, where if where is not None else path)
    return error if code is None else StorageError.writing(error, path, hint, code)


def tmp_path(path: str | Path) -> Path:
    """The pid-named temporary sibling of `path`; it keeps `path`'s suffix (np.save, np.savez
    and pandas look at it)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | Path, hint: str = ""):
    """`with atomic_path(p) as tmp: write to tmp` - renamed onto `p` when the block succeeds; on any
    error the temporary is removed, and a storage fault (`storage_errno`: ENOSPC, ...) becomes a
    StorageError naming `p`. Shared by every binary cache writer (.npz, .npy, .parquet)."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        failure = storage_failure(e, path, hint, where=tmp)
        if failure is e:
            raise
        raise failure from e
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """The binary twin of `write_text_atomic`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename, so a reader sees the old
    file or the new one, never half of one. The temporary name carries the pid: runs started side
    by side share the caches, and with one shared name a run's rename took the other's file away
    mid-write."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with reported_write(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


@contextmanager
def reported_write(path: str | os.PathLike, tmp: str | os.PathLike):
    """Around writing `tmp` and moving it onto `path`: a storage failure (a full disk, no
    permission) is raised as one StorageError naming the file; the temporary is removed in any
    case (after a successful move it is already gone)."""
    try:
        yield
    except Exception as e:
        failure = storage_failure(e, path, where=tmp)
        if failure is e:
            raise
        raise failure from e
    finally:
        Path(tmp).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a temporary it names may be in use)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_owner(path: str | Path) -> int | None:
    """The pid in a temporary's name (`<name>.<pid>.tmp[<suffix>]`), None if it has none."""
    parts = Path(path).name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "tmp" and parts[i - 1].isdigit():
            return int(parts[i - 1])
    return None


def stale_tmp(path: str | Path) -> bool:
    """A temporary left by a process that is gone (safe to delete); a live process's is kept."""
    pid = tmp_owner(path)
    return pid is None or not pid_alive(pid)


def write_dir_atomic(path: str | Path, write, owned: set[str] | None = None) -> Path:
    """Build the directory `path` so that it appears only complete: `write(tmp)` fills a fresh
    sibling `<name>.tmp-<pid>`, which is then renamed to `path` (an existing `path` is first
    moved aside to `<name>.old-<pid>`, deleted afterwards). A process killed at any moment leaves
    `path` as it was (or, killed between the two renames, absent) plus such siblings, which the
    next call removes once their process is gone.

    `owned`: the only file names an existing `path` may hold; anything else means the directory
    is not ours to replace (FileExistsError). If another process renames its own complete copy
    into place first, that copy is kept and ours is dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_dirs(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        if owned is not None:
            foreign = sorted(p.name for p in path.iterdir() if p.name not in owned)
            if foreign:
                raise FileExistsError(f"{path} already holds other files ({', '.join(foreign[:5])}); "
                                      f"refusing to replace it: choose an empty or a new directory")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if path.is_dir():       # another process put its complete copy in place meanwhile
                return path
            if old.exists():
                os.replace(old, path)   # put the old one back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def _remove_stale_dirs(path: Path) -> None:
    """Delete the `<name>.tmp-<pid>` / `<name>.old-<pid>` siblings of `path` left by processes
    that are gone (or by an earlier call of this one)."""
    import glob
    import re
    pattern = re.compile(re.escape(path.name) + r"\.(?:tmp|old)-(\d+)")
    for p in path.parent.glob(f"{glob.escape(path.name)}.*-*"):
        m = pattern.fullmatch(p.name)
        if m and (int(m.group(1)) == os.getpid() or not pid_alive(int(m.group(1)))):
            shutil.rmtree(p, ignore_errors=True)


def check_file(path: Path) -> str | None:
    """What is wrong with a saved file, or None if it looks whole: a safetensors file shorter than
    its header says, a zip (torch.save) without its central directory or with members past its
    end, an empty file, unparsable JSON. Cheap: headers and sizes only, no tensor data read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(8)
            if path.suffix == ".safetensors":
                if len(head) < 8:
                    return f"{size} bytes, shorter than a safetensors header"
                n = struct.unpack("<Q", head)[0]
                if 8 + n > size:
                    return f"{size} bytes, its header alone needs {8 + n}"
                header = json.loads(f.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                          default=0)
                if 8 + n + end > size:
                    return f"{size} bytes, its header describes {8 + n + end}"
            elif head.startswith(b"PK\x03\x04"):
                with zipfile.ZipFile(path) as z:
                    for info in z.infolist():
                        if info.header_offset + info.compress_size > size:
                            return f"{size} bytes, member {info.filename} runs past the end"
            elif path.suffix == ".json":
                json.loads(path.read_text())
    except zipfile.BadZipFile as e:
        return f"{size} bytes, not a complete zip archive: {e}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:   # bad JSON in a header or file
        return f"unreadable header or JSON: {type(e).__name__}: {e}"
    except OSError as e:
        return f"cannot be read: {e}"
    return None
