"""Images in object stores (S3 and S3-compatible, Google Cloud Storage, Azure Blob) through fsspec.

A job's root may be a URL prefix, ``s3://bucket/photos/``, as well as a directory: its images are
listed page by page (bounded memory, whatever the number of keys) with the size the listing gives
for free, and each image is stored as its full URL. A worker reads an object with one ranged GET,
refused from the listed size before any byte is fetched.

Credentials are the store's own business: s3fs (botocore) reads ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, profiles and instance roles by itself, gcsfs and
adlfs their equivalents. imgbatch never sees them, so it cannot store or print them; a URL that
carries credentials itself (``s3://key:secret@bucket``, ``?sig=...``) is refused.

Verdicts, as for files (imgbatch.core.files): a missing object, an empty or too large one is that
image's error row (`ImageDecodeError`); anything else the store says (throttling, 5xx, timeouts,
connection refused, access denied on this host) is `TransientFileError` once the client's own
retries with backoff are spent, and the image stays pending for another attempt.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

from imgbatch.core.errors import UserError
from imgbatch.core.files import ImageDecodeError, TransientFileError, read_image_file
from imgbatch.core.urls import redact_url

# fsspec protocol names of the stores imgbatch reads; the libraries behind them are s3fs (installed),
# gcsfs and adlfs (installed by whoever uses them).
STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# Keys per listing call gathered on the event loop before control comes back (one S3 page).
LIST_PAGE = 1000


def is_url(source: str | bytes) -> bool:
    """Whether a job root or stored image path names an object store rather than a local path."""
    text = os.fsdecode(source)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in STORE_SCHEMES


def store_root(url: str) -> str:
    """The prefix as a job root: ``scheme://bucket/prefix/`` (a prefix is a folder: ``photos`` does not
    take in ``photos2/``), or a UserError saying what is wrong with the URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in STORE_SCHEMES:
        raise UserError(f"unknown store in {redact_url(url)!r}: use s3://, gs:// or az://")
    if "@" in parts.netloc or parts.query or parts.fragment:
        shown = redact_url(url.split("?", 1)[0].split("#", 1)[0]) + ("?***" if parts.query else "")
        raise UserError(
            f"credentials or parameters in {shown!r} are not accepted: give them the store's "
            "usual way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance role)"
        )
    if not parts.netloc:
        raise UserError(f"no bucket in {url!r}")
    key = parts.path.strip("/")
    if any(part in (".", "..") for part in key.split("/")):
        raise UserError(f"'.' or '..' in {url!r}: give the prefix as the store lists it")
    return f"{scheme}://{parts.netloc}/{key + '/' if key else ''}"


def inside_prefixes(url: str, roots: list[str]) -> bool:
    """Whether the object `url` lies under one of the job's root prefixes. Keys are not paths (S3
    keeps ``a/../b`` as is), but anything in between may normalize them: such keys are refused."""
    scheme, sep, rest = url.partition("://")
    if not sep or any(part in (".", "..") for part in rest.split("/")[1:]):
        return False
    normal = f"{scheme.lower()}://{rest}"
    return any(normal.startswith(root) for root in roots if is_url(root))


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a URL's store, configured from the environment as its library is.
    fsspec caches instances per process and makes new ones after a fork. ImportError names the
    library to install (gcsfs, adlfs)."""
    import fsspec

    scheme = urlsplit(url).scheme.lower()
    try:
        return fsspec.filesystem(scheme)
    except ImportError as exc:
        raise ImportError(f"reading {scheme}:// needs a library that is not installed: {exc}") from exc


# ---------------------------------------------------------------------------- listing
def list_objects(root: str) -> Iterator[tuple[str, int]]:
    """(object URL, size in bytes) of every object under the root prefix, a page at a time: memory
    is one page whatever the number of keys. Folder markers (keys ending in ``/``) are left out.

    Raises UserError when the bucket does not exist, or the store cannot be reached or refuses us."""
    scheme = urlsplit(root).scheme.lower()
    try:
        fs = filesystem(root)
    except ImportError as exc:
        raise UserError(str(exc).splitlines()[0]) from exc
    try:
        if hasattr(fs, "_iterdir"):  # s3fs: ListObjectsV2 pages, no delimiter, so the whole subtree
            yield from _paged(fs, scheme, root)
        else:  # gcsfs, adlfs: one directory's listing at a time
            yield from _walked(fs, scheme, root)
    except FileNotFoundError as exc:
        raise UserError(f"no such bucket or prefix: {redact_url(root)}") from exc
    except UserError:
        raise
    except Exception as exc:  # the client has retried with backoff already
        raise UserError(f"cannot list {redact_url(root)}: {_reason(exc)}") from exc


def _paged(fs: Any, scheme: str, root: str) -> Iterator[tuple[str, int]]:
    from fsspec.asyn import sync

    bucket, _, prefix = root.split("://", 1)[1].partition("/")
    pages: AsyncIterator[dict[str, Any]] = fs._iterdir(bucket, delimiter="", prefix=prefix)
    while True:
        page = sync(fs.loop, _take, pages, LIST_PAGE)
        for info in page:
            if info.get("type") == "file" and not info["name"].endswith("/"):
                yield f"{scheme}://{info['name']}", int(info["size"])
        if len(page) < LIST_PAGE:
            return


async def _take(items: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to `count` items of an async iterator (one round trip into the event loop per page)."""
    out: list[dict[str, Any]] = []
    async for item in items:
        out.append(item)
        if len(out) == count:
            break
    return out


def _walked(fs: Any, scheme: str, root: str) -> Iterator[tuple[str, int]]:
    for _directory, _subdirs, files in fs.walk(root, detail=True):
        for info in sorted(files.values(), key=lambda i: i["name"]):
            if info.get("type") == "file":
                yield f"{scheme}://{info['name'].lstrip('/')}", int(info.get("size") or 0)


# ---------------------------------------------------------------------------- reading
def read_object(url: str, size_bytes: int | None, max_bytes: int) -> bytes:
    """The object's bytes, refused from the listed size before any download (or from a HEAD when the
    size is not known); one ranged GET that never fetches more than `max_bytes` + 1."""
    try:
        fs = filesystem(url)  # an ImportError here is this host's problem: transient, below
        if size_bytes is None:
            size_bytes = int(fs.info(url)["size"])
        _refuse(size_bytes, max_bytes)
        data: bytes = fs.cat_file(url, start=0, end=max_bytes + 1)
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        raise ImageDecodeError("object not found") from exc
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise ImageDecodeError("not an object") from exc
    except (Exception, asyncio.CancelledError) as exc:
        raise TransientFileError(_reason(exc)) from exc
    if len(data) > max_bytes:  # replaced by a larger object after the listing
        raise ImageDecodeError(f"file too large: more than {max_bytes} bytes")
    if not data:
        raise ImageDecodeError("empty file")
    return data


def _refuse(size_bytes: int, max_bytes: int) -> None:
    if size_bytes == 0:
        raise ImageDecodeError("empty file")
    if size_bytes > max_bytes:
        raise ImageDecodeError(f"file too large: {size_bytes} bytes, the limit is {max_bytes}")


def read_image(source: str, size_bytes: int | None, max_bytes: int) -> bytes:
    """An image's bytes, from a local file or an object in a store (the same verdicts for both)."""
    if is_url(source):
        return read_object(source, size_bytes, max_bytes)
    return read_image_file(source, max_bytes)


def _reason(exc: BaseException) -> str:
    """One line naming what the store said; URLs in it are redacted (a presigned one carries a key)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    words = [redact_url(w) if "://" in w else w for w in text.split(" ")]
    return f"{type(exc).__name__}: {' '.join(words)}" if text else type(exc).__name__
