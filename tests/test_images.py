import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from licbench.data.images import load_rgb8
from licbench.errors import ImageError


def write_png16_rgb(path, arr):
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_rgb8_is_read_unchanged(tmp_path, rng):
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    loaded = load_rgb8(tmp_path / "a.png")
    assert loaded.conversion == ""
    np.testing.assert_array_equal(loaded.array, arr)


def test_grayscale_is_replicated(tmp_path, rng):
    arr = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    loaded = load_rgb8(tmp_path / "g.png")
    assert loaded.conversion == "gray->rgb"
    np.testing.assert_array_equal(loaded.array, np.repeat(arr[..., None], 3, axis=2))


def test_alpha_is_dropped(tmp_path, rng):
    arr = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    loaded = load_rgb8(tmp_path / "a.png")
    assert loaded.conversion == "rgba->rgb (alpha dropped)"
    np.testing.assert_array_equal(loaded.array, arr[..., :3])


def test_sixteen_bit_gray_keeps_high_byte(tmp_path, rng):
    arr = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    loaded = load_rgb8(tmp_path / "g16.png")
    assert loaded.conversion == "gray16->rgb8 (high byte)"
    np.testing.assert_array_equal(loaded.array[..., 0], (arr >> 8).astype(np.uint8))


def test_sixteen_bit_rgb_keeps_high_byte(tmp_path, rng):
    arr = rng.integers(0, 65536, (3, 5, 3), dtype=np.uint16)
    write_png16_rgb(tmp_path / "c16.png", arr)
    loaded = load_rgb8(tmp_path / "c16.png")
    assert loaded.conversion == "rgb16->rgb8 (high byte)"
    np.testing.assert_array_equal(loaded.array, (arr >> 8).astype(np.uint8))


def test_palette_and_cmyk_are_converted(tmp_path, rng):
    arr = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    assert load_rgb8(tmp_path / "p.png").conversion == "palette->rgb"
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg")
    loaded = load_rgb8(tmp_path / "c.jpg")
    assert loaded.conversion == "cmyk->rgb" and loaded.array.shape == (4, 6, 3)


def test_truncated_image_names_the_file(tmp_path, mirror):
    data = (mirror / "kodak" / "kodim01.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png: unreadable image: .*truncated"):
        load_rgb8(tmp_path / "cut.png")


def test_garbage_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match=r"junk\.png: unreadable image"):
        load_rgb8(tmp_path / "junk.png")
    with pytest.raises(ImageError, match=r"nothere\.png: no such file"):
        load_rgb8(tmp_path / "nothere.png")


def test_oversized_image_is_refused_before_decoding(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big\.png: 300x200 image exceeds the limit"):
        load_rgb8(tmp_path / "big.png", max_pixels=50_000)


def test_float_images_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.float32), "F").save(tmp_path / "f.tiff")
    with pytest.raises(ImageError, match=r"f\.tiff: unsupported image mode 'F'"):
        load_rgb8(tmp_path / "f.tiff")


def test_corrupt_jpeg_names_the_file(tmp_path, mirror):
    data = (mirror / "bsds500" / "test" / "100007.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg: unreadable image"):
        load_rgb8(tmp_path / "cut.jpg")
    mangled = bytearray(data)
    mangled[2:200] = bytes(198)  # destroy the JPEG header segments
    (tmp_path / "bad.jpg").write_bytes(bytes(mangled))
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        load_rgb8(tmp_path / "bad.jpg")


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    loaded = load_rgb8(tmp_path / "one.png")
    assert loaded.array.tolist() == [[[10, 20, 30]]]
