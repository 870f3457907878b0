"""Object-store URLs as job roots (imgbatch.core.stores): what is a URL, how a prefix becomes a root,
which objects are inside it, and URLs carrying credentials refused without being shown."""

from __future__ import annotations

import pytest

from imgbatch.core.errors import UserError
from imgbatch.core.stores import inside_prefixes, is_url, store_root


def test_urls_and_paths_are_told_apart() -> None:
    assert all(is_url(u) for u in ["s3://b/p", "S3://b", "gs://b/", "az://c/p", "abfs://c/p", b"s3://b/k"])
    assert not any(is_url(p) for p in ["/data/s3://x", "photos", "ftp://host/x", "s3:/b/p", "C:\\x"])


def test_a_prefix_is_a_folder() -> None:
    assert store_root("s3://bucket/photos") == "s3://bucket/photos/"
    assert store_root("S3://bucket/photos///") == "s3://bucket/photos/"
    assert store_root("gs://bucket") == "gs://bucket/"
    roots = [store_root("s3://bucket/photos")]
    assert inside_prefixes("s3://bucket/photos/a/cat.jpg", roots)
    assert not inside_prefixes("s3://bucket/photos2/cat.jpg", roots)
    assert not inside_prefixes("s3://other/photos/cat.jpg", roots)
    assert not inside_prefixes("gs://bucket/photos/cat.jpg", roots)
    assert not inside_prefixes("/bucket/photos/cat.jpg", roots)


@pytest.mark.parametrize("key", ["photos/../secret/cat.jpg", "photos/./cat.jpg", "photos/a/.."])
def test_keys_that_could_be_normalized_are_refused(key: str) -> None:
    assert not inside_prefixes(f"s3://bucket/{key}", ["s3://bucket/photos/"])


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIA:s3cr3t-value@bucket/p/",
        "s3://bucket/p/?X-Amz-Signature=s3cr3t-value",
        "s3://b/p#s3cr3t-value",
    ],
)
def test_credentials_in_a_url_are_refused_and_not_shown(url: str) -> None:
    with pytest.raises(UserError, match="credentials or parameters") as caught:
        store_root(url)
    assert "s3cr3t-value" not in str(caught.value)


@pytest.mark.parametrize("url", ["s3:///photos/", "s3://bucket/a/../b/"])
def test_malformed_prefixes_are_user_errors(url: str) -> None:
    with pytest.raises(UserError):
        store_root(url)
