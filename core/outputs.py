"""Where a command writes its output: stdout (`-`), a local file, or an object-store URL.

A local file is written to a temporary file beside it and renamed into place, so a failed or
interrupted write leaves no half file and nothing but a regular file is ever replaced. A URL
(`s3://bucket/key`, and whatever else fsspec knows: `gs://`, `az://` with their extras) is written
inside an fsspec transaction: the object appears when the write completes, and a failure discards
it (for S3 the multipart upload is aborted). Credentials are the store's usual ones (AWS_* variables,
profiles, instance roles), read by its library; nothing here sees or prints them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from imgbatch.core.errors import UserError

STDOUT = "-"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(target: str) -> bool:
    """Whether `target` names an object by URL (``s3://...``, ``file://...``) rather than a path."""
    return bool(_URL.match(target))


def shown_target(target: str | Path) -> str:
    """`target` as messages may show it: a URL's password (if one was written in it) as ***,
    control characters escaped."""
    from imgbatch.core.names import shown
    from imgbatch.core.urls import redact_url

    text = str(target)
    return shown(redact_url(text) if is_url(text) else text)


def check_writable(target: str | Path, what: str) -> None:
    """Fail before the (possibly long) work when `target` cannot or must not be written: an existing
    path that is not a regular file (a directory, device, FIFO, socket) is refused, as is a URL
    naming an existing prefix ("directory") of the store."""
    text = str(target)
    if text == STDOUT:
        return
    if is_url(text):
        fs, path = _filesystem(text, what)
        if not _is_local(fs):
            if _store_call(lambda: fs.isdir(path), text, what):
                raise UserError(
                    f"refusing to write {what} to {shown_target(text)}: it is a prefix (a directory)"
                )
            return
        text = path
    output = Path(text)
    try:
        mode = output.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UserError(f"cannot write {what} to {output}: {exc.strerror or exc}") from exc
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISLNK(mode):
            kind = "a symlink (not a regular file; write to its target instead)"
        else:
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise UserError(f"refusing to write {what} to {output}: it is {kind}")
    parent = output.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {what} to {output}: no such directory {parent}")
    if not os.access(parent, os.W_OK) or (mode is not None and not os.access(output, os.W_OK)):
        raise UserError(f"cannot write {what} to {output}: permission denied")


@contextlib.contextmanager
def open_output(target: str | Path, what: str) -> Iterator[IO[bytes]]:
    """A binary file to write `what` to at `target` (a path or a URL; not stdout), committed only
    when the block ends without an exception. Errors of the file system or the store are UserErrors
    naming the target."""
    text = str(target)
    if is_url(text):
        fs, path = _filesystem(text, what)
        if not _is_local(fs):
            with _store_errors(text, what), fs.transaction, fs.open(path, "wb") as handle:
                yield handle
            return
        text = path
    with _local_output(Path(text), what) as handle:
        yield handle


@contextlib.contextmanager
def open_text_output(target: str | Path, what: str) -> Iterator[IO[str]]:
    """`open_output` as UTF-8 text; stdout itself for `-`."""
    if str(target) == STDOUT:
        yield sys.stdout
        return
    with open_output(target, what) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # the binary file is closed (and committed) by open_output, not here


@contextlib.contextmanager
def _local_output(output: Path, what: str) -> Iterator[IO[bytes]]:
    check_writable(output, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as exc:
        raise UserError(f"cannot write {what} to {output}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def _filesystem(url: str, what: str) -> tuple[Any, str]:
    """fsspec's filesystem for the URL's scheme, or a UserError saying what is missing or wrong."""
    from fsspec.core import url_to_fs

    parts = urlsplit(url)
    if "@" in parts.netloc or parts.query or parts.fragment:
        # The store's library would take `key:secret@bucket` for a bucket name and quote it back
        # in its error; credentials have their usual places.
        bare = shown_target(url.split("?", 1)[0].split("#", 1)[0]) + ("?***" if parts.query else "")
        raise UserError(
            f"credentials or parameters in {bare} are not accepted: give them the store's usual way "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance role)"
        )
    try:
        fs, path = url_to_fs(url)
        return fs, str(path)
    except ImportError as exc:
        raise UserError(f"cannot write {what} to {shown_target(url)}: {exc}") from exc
    except ValueError as exc:  # an unknown protocol
        raise UserError(f"cannot write {what} to {shown_target(url)}: {exc}") from exc


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _store_error_types() -> tuple[type[BaseException], ...]:
    # s3fs turns the store's answers into OSErrors (FileNotFoundError for a missing bucket,
    # PermissionError for denied access); botocore's own (no credentials, an unreachable endpoint)
    # come as BotoCoreError.
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


@contextlib.contextmanager
def _store_errors(url: str, what: str) -> Iterator[None]:
    # A missing bucket, denied access, an unreachable endpoint: the user's to fix, in one line.
    try:
        yield
    except _store_error_types() as exc:
        raise UserError(f"cannot write {what} to {shown_target(url)}: {_reason(exc)}") from exc


def _store_call(call: Any, url: str, what: str) -> Any:
    with _store_errors(url, what):
        return call()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
