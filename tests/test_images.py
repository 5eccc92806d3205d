"""The colour, depth, orientation and size rules of data/images.py on real encoded images."""
import numpy as np
import pytest
from PIL import Image

from vae_pipeline.data import images
from tests import image_files as files


def normalize(data, shape, policy="resize", **kw):
  return images.normalize(data, shape, policy, **kw)


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                                          ("TIFF", {}), ("GIF", {})])
def test_lossless_formats_round_trip(fmt, options):
  pixels = (np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)
  data = files.encode(Image.fromarray(pixels), fmt, **options)
  np.testing.assert_array_equal(normalize(data, (28, 28, 1))[..., 0], pixels)


def test_jpeg_is_decoded_by_content_whatever_its_name():
  data = files.encode(files.gray(200), "JPEG", quality=100)
  assert np.abs(normalize(data, (28, 28, 1)).astype(int) - 200).max() <= 1


def test_gif_animation_gives_its_first_frame():
  frames = [files.gray(10), files.gray(240)]
  data = files.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
  assert normalize(data, (28, 28, 1)).max() <= 12


def test_grey_to_rgb_replicates_and_rgb_to_grey_is_luma():
  rgb = normalize(files.encode(files.gray(90)), (28, 28, 3))
  assert rgb.shape == (28, 28, 3) and np.all(rgb == 90)
  red = Image.new("RGB", (28, 28), (255, 0, 0))
  grey = normalize(files.encode(red), (28, 28, 1))
  assert grey.shape == (28, 28, 1) and np.all(grey == 76)  # 0.299 * 255, ITU-R 601


def test_alpha_is_composited_onto_black():
  rgba = Image.new("RGBA", (28, 28), (200, 100, 50, 128))
  got = normalize(files.encode(rgba), (28, 28, 3))
  np.testing.assert_array_equal(got[0, 0], [100, 50, 25])
  transparent = Image.new("LA", (28, 28), (255, 0))
  assert normalize(files.encode(transparent), (28, 28, 1)).max() == 0


def test_palette_with_transparency_is_expanded():
  image = Image.new("P", (28, 28), 1)
  image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
  data = files.encode(image, "PNG", transparency=0)
  assert np.all(normalize(data, (28, 28, 1)) == 255)


def test_sixteen_bit_png_is_scaled_to_eight_bits():
  pixels = np.array([[0, 257, 32896, 65535]] * 4, np.uint16)
  data = files.encode(Image.fromarray(pixels))
  got = normalize(data, (4, 4, 1))[0, :, 0]
  np.testing.assert_array_equal(got, [0, 1, 128, 255])


def test_cmyk_jpeg_becomes_rgb():
  cmyk = Image.new("CMYK", (28, 28), (0, 255, 255, 0))  # red in CMYK
  got = normalize(files.encode(cmyk, "JPEG", quality=100), (28, 28, 3))
  assert got[..., 0].mean() > 240 and got[..., 1].mean() < 15 and got[..., 2].mean() < 15


def test_exif_orientation_is_applied():
  wide = np.zeros((20, 40), np.uint8)
  wide[:, :20] = 255  # left half white
  data = files.jpeg_with_orientation(Image.fromarray(wide), 6)  # "rotate 90 CW to display"
  upright = normalize(data, (40, 20, 1), policy="reject")  # now tall: 40 high, 20 wide
  assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # white half on top


def test_size_policies():
  image = files.encode(Image.fromarray(np.full((10, 20), 255, np.uint8)))
  assert normalize(image, (28, 28, 1), "resize").min() > 250  # stretched to fill
  padded = normalize(image, (28, 28, 1), "pad")[..., 0]
  assert padded[14, 14] > 250 and padded[0, 14] == 0 and padded[27, 14] == 0  # black bars
  with pytest.raises(images.BadInput, match="size 10x20 differs from the target 28x28"):
    normalize(image, (28, 28, 1), "reject")


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"just some text, not a picture\n", "not an image"),
    (files.truncated_png(), "truncated"),
    (files.png_claiming_size(100_000, 100_000), "decompression-bomb guard"),
])
def test_bad_inputs_say_why(data, reason):
  with pytest.raises(images.BadInput, match=reason):
    normalize(data, (28, 28, 1))


def test_the_pixel_limit_is_configurable():
  with pytest.raises(images.BadInput, match="over the limit of 100"):
    normalize(files.encode(files.gray()), (28, 28, 1), max_pixels=100)


@pytest.mark.parametrize("array, reason", [
    (np.full((28, 28), np.nan), "NaN"),
    (np.full((28, 28), 300.0), "outside 0-255"),
    (np.full((28, 28), -1), "outside 0-255"),
    (np.zeros((28, 28, 2)), "not an image"),
])
def test_bad_arrays_say_why(array, reason):
  with pytest.raises(images.BadInput, match=reason):
    normalize(array, (28, 28, 1))


def test_raw_pixel_bytes_of_the_target_shape_are_accepted_from_a_tfrecord_feature_only():
  pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
  np.testing.assert_array_equal(normalize(images.FeatureBytes(pixels.tobytes()), (2, 2, 3)), pixels)
  with pytest.raises(images.BadInput, match="not an image"):  # a file's bytes: never raw pixels
    normalize(pixels.tobytes(), (2, 2, 3))
