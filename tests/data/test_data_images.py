from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepmetric.data.images import ImageError, ImageNotFoundError, ImageTooLargeError, is_image_source, load_image
from deepmetric.faces.samples import astronaut, encode, rotated_with_exif


def test_exif_orientation_is_applied():
    image = astronaut()
    upright = load_image(rotated_with_exif(image))
    assert upright.shape == image.shape
    assert np.abs(upright.astype(int) - image.astype(int)).mean() < 4  # JPEG noise only
    sideways = np.asarray(Image.open(io.BytesIO(rotated_with_exif(image))).convert("RGB"))
    assert sideways.shape == (512, 512, 3) and np.abs(sideways.astype(int) - image.astype(int)).mean() > 30


def test_grayscale_rgba_palette_and_16_bit():
    image = astronaut()
    gray = np.asarray(Image.fromarray(image).convert("L"))
    out = load_image(encode(gray))
    assert out.shape == (512, 512, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)

    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner turns white
    out = load_image(encode(rgba))
    assert np.array_equal(out[10:, 10:], image[10:, 10:]) and np.all(out[:10, :10] == 255)

    wide = (gray.astype(np.uint16) * 257)
    out16 = load_image(encode(wide))
    assert np.abs(out16[..., 0].astype(int) - gray.astype(int)).max() <= 1
    assert np.array_equal(load_image(wide), out16)

    palette = Image.fromarray(image).convert("P")
    assert load_image(palette).shape == (512, 512, 3)
    assert np.array_equal(load_image(image.astype(np.float32) / 255.0), image)


def test_not_an_image_truncated_and_empty():
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"%PDF-1.4 definitely not pixels")
    jpeg = encode(astronaut(), "JPEG")
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="not found"):
        load_image("/no/such/photo.jpg")
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4), np.nan))
    with pytest.raises(TypeError):
        load_image(12345)


def test_decompression_bomb_refused_before_decoding():
    # 48 megapixels of one colour compress to a few kilobytes; the header alone must be enough to refuse.
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(ImageError, match="too large"):
        load_image(bomb.getvalue())
    with pytest.raises(ImageError, match="too large"):
        load_image(encode(astronaut()), max_pixels=512 * 511)
    assert load_image(encode(astronaut()), max_pixels=512 * 512).shape == (512, 512, 3)


def test_every_source_kind_is_turned_upright(tmp_path):
    jpeg = rotated_with_exif(astronaut())
    path = tmp_path / "portrait.jpg"
    path.write_bytes(jpeg)
    expected = load_image(jpeg)
    stream = io.BytesIO(jpeg)
    opened = Image.open(path)
    for source in (path, str(path), bytearray(jpeg), memoryview(jpeg), stream, opened):
        assert is_image_source(source)
        assert np.array_equal(load_image(source), expected), type(source).__name__
    assert not stream.closed  # the caller's stream and PIL image are left as they were
    assert opened.getexif().get(0x0112) == 6
    assert not is_image_source(expected) and not is_image_source(3)


def test_one_bit_and_float_arrays():
    bits = Image.new("1", (6, 4))
    bits.putpixel((2, 1), 1)
    out = load_image(bits)
    assert out.shape == (4, 6, 3) and out[1, 2].tolist() == [255, 255, 255] and int(out.sum()) == 3 * 255
    with pytest.raises(ImageError, match=r"\[0, 1\].*uint8"):
        load_image(np.full((4, 4, 3), 200.0))
    with pytest.raises(ImageError, match="dtype"):
        load_image(np.zeros((4, 4), np.int64))


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "gone.png"
    with pytest.raises(FileNotFoundError, match=r"gone\.png") as caught:
        load_image(missing)
    assert isinstance(caught.value, ImageNotFoundError) and isinstance(caught.value, ValueError)
    broken = tmp_path / "broken.jpg"
    jpeg = encode(astronaut(), "JPEG")
    broken.write_bytes(jpeg[: len(jpeg) // 3])
    with pytest.raises(ImageError, match=r"broken\.jpg.*(corrupt|truncated)"):
        load_image(broken)
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    with pytest.raises(ImageError, match=r"^not an image: .*notes\.png"):
        load_image(text)


def test_pixel_limit_is_an_argument_not_process_state():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="max_pixels=100"):
        load_image(encode(np.zeros((20, 20), np.uint8)), max_pixels=100)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((20, 20), np.uint8), max_pixels=399)
    assert before == Image.MAX_IMAGE_PIXELS
    for bad in (0, -5, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="max_pixels"):
            load_image(np.zeros((2, 2), np.uint8), max_pixels=bad)
