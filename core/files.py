"""Reading an image file a worker was asked for: only inside the job's directories, only a regular file,
never more than a size limit, never blocking on a FIFO or device swapped in after the scan.

What is a property of the file (gone, unreadable, not a regular file, too large) raises
`ImageDecodeError`, which becomes the image's error row; what is a failure of the environment (an
I/O error of the mount, a stale NFS handle, a disconnected FUSE server) raises `TransientFileError`,
which leaves the image pending for another attempt.
"""

from __future__ import annotations

import errno
import os
import stat

# 256 MiB: the largest image under the default pixel limit (80 MP) stored uncompressed as 8-bit RGB is
# 240 MB, so every image a worker may decode fits; a worker reads a file into memory once, so this
# also bounds what one image can cost it before decoding starts.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

# errno values that say something about the mount or the machine, not about the file.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EIO",
        "ESTALE",
        "ENOTCONN",
        "ETIMEDOUT",
        "ENODEV",
        "ENXIO",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ECONNABORTED",
        "ECONNRESET",
        "ECONNREFUSED",
        "ENETDOWN",
        "ENETUNREACH",
        "ENOLINK",
        "EREMOTEIO",
        "ENOMEM",
        "EAGAIN",
        "EINTR",
        "EBUSY",
        "ENFILE",
        "EMFILE",
    )
    if hasattr(errno, name)
)


class ImageDecodeError(Exception):
    """This file cannot become model input; the message is the reason stored with the image."""


class TransientFileError(Exception):
    """The file could not be read because of its environment; try again later (maybe elsewhere)."""


BROKEN_LINK = "broken symbolic link"


def is_broken_link(path: str | os.PathLike[str]) -> bool:
    """A symbolic link whose target is not there (what `open` reports as file not found)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode) and not os.path.exists(path)
    except OSError:
        return False


def file_error(exc: OSError, path: str | os.PathLike[str]) -> Exception:
    """The image's verdict for an OSError met while opening or reading `path`."""
    if isinstance(exc, FileNotFoundError):
        return ImageDecodeError(BROKEN_LINK if is_broken_link(path) else "file not found")
    if isinstance(exc, PermissionError):
        return ImageDecodeError("permission denied")
    name = errno.errorcode.get(exc.errno or 0, "error")
    if exc.errno in TRANSIENT_ERRNOS:
        return TransientFileError(f"{name}: {exc.strerror or exc}")
    return ImageDecodeError(f"cannot read file: {name}: {exc.strerror or exc}")


def _refuse(st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError("not a regular file")  # a FIFO or device would block the worker
    if st.st_size == 0:
        raise ImageDecodeError("empty file")
    if st.st_size > max_bytes:
        raise ImageDecodeError(f"file too large: {st.st_size} bytes, the limit is {max_bytes}")


def read_image_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The whole file, refused from `stat` before any read when it is not a non-empty regular file
    under `max_bytes`.

    Opened with O_NONBLOCK and checked again with `fstat` on the opened descriptor: a FIFO or device
    put in the file's place after the first check is refused without blocking, and nothing is read.
    """
    try:
        _refuse(os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise file_error(exc, path) from exc
    try:
        st = os.fstat(fd)
        _refuse(st, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise file_error(exc, path) from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew after fstat
        raise ImageDecodeError(f"file too large: more than {max_bytes} bytes")
    if not data:
        raise ImageDecodeError("empty file")
    return data


def inside_roots(path: str | bytes, roots: list[bytes]) -> bool:
    """Whether `path`, resolved (symlinks, ``..``), lies inside one of the resolved `roots` (bytes)."""
    try:
        real = os.path.realpath(os.fsencode(path))
    except (OSError, ValueError):
        return False
    return any(real == root or real.startswith(root.rstrip(b"/") + b"/") for root in roots)
