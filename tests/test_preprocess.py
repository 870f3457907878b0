"""The shared preprocessing: exact numbers, orientation, odd modes, and refusals with reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgbatch.preprocess import ImageDecodeError, PreprocessSpec, load_tensor, open_image, to_tensor

SPEC = PreprocessSpec()


def test_shape_dtype_and_normalisation_of_a_flat_image(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.new("RGB", (400, 300), (127, 255, 0)).save(path)
    x = load_tensor(path, SPEC)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = (np.array([127, 255, 0]) / 255 - 0.498) / 0.502
    np.testing.assert_allclose(x[:, 100, 100], expected, atol=1e-4)


def test_center_crop_of_the_shorter_side(tmp_path: Path) -> None:
    # Left third black, middle white, right third black: a center crop of a 3:1 image is all white.
    img = np.zeros((300, 900, 3), np.uint8)
    img[:, 300:600] = 255
    x = to_tensor(Image.fromarray(img), SPEC)
    assert x.min() > 0.95


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    # Stored landscape with the top half red, EXIF says rotate 90: upright it is portrait, left red.
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:100] = (255, 0, 0)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = open_image(path, SPEC)
    assert img.size == (200, 400)
    left, right = np.asarray(img)[200, 20], np.asarray(img)[200, 180]
    assert right[0] > 200 and left[0] < 60, (left, right)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_common_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    img = (
        Image.new("RGB", (300, 260), (10, 200, 30)).convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.full((260, 300), 40000, np.uint16))
    )
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, fmt)
    x = load_tensor(path, SPEC)
    assert x.shape == (3, 224, 224) and np.isfinite(x).all()
    if mode == "I;16":  # 40000/65535 of full scale, not clipped to white
        assert -0.1 < x.mean() < 0.4


def test_large_jpeg_is_drafted_down_but_not_below_the_resize(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (90, 90, 90)).save(path, quality=80)
    img = open_image(path, SPEC)
    assert min(img.size) >= SPEC.resize and img.size[0] < 4000


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "not a decodable image"),
        (bytes(range(256)) * 40, "not a decodable image"),
        (b"just some text\n", "not a decodable image"),
    ],
)
def test_bad_files_raise_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_tensor(path, SPEC)


def test_truncated_jpeg_is_an_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), np.uint8)).save(buf, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        load_tensor(path, SPEC)


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (5000, 5000)).save(path, optimize=True)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        open_image(path, SPEC, max_pixels=1_000_000)


def test_missing_file_has_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_tensor(tmp_path / "gone.jpg", SPEC)


def test_spec_round_trips_and_validates() -> None:
    assert PreprocessSpec.from_json(SPEC.to_json()) == SPEC
    with pytest.raises(ValueError, match="crop"):
        PreprocessSpec(resize=100, crop=224)
