"""Any image in, the pipeline's uint8 H x W x C array out, by one documented set of rules.

- Format: whatever Pillow decodes (PNG, JPEG, BMP, GIF, WebP, TIFF, ...), recognized from the
  content, not the file name. GIFs and other animations: the first frame.
- Orientation: the EXIF orientation tag is applied (a phone photo comes out upright).
- Colour: 1 channel is ITU-R 601 luma (Pillow's `L`); 3 channels is RGB (grey is replicated).
  Palette images are expanded first; CMYK is converted to RGB.
- Transparency: composited onto black (the MNIST background), so a transparent pixel is 0.
- Bit depth: 16-bit images are scaled to 8 bits (v * 255 / 65535, rounded).
- Size: SIZE_POLICIES below; `resize` is the default.
- Too many pixels (a decompression bomb): rejected before decoding.
Every refusal is a BadInput whose message says why.
"""
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# What to do with an image whose height and width differ from the target:
#   resize: scale to the target size (aspect ratio not kept), Lanczos filter;
#   pad:    scale to fit inside the target keeping the aspect ratio, centre, pad with black;
#   reject: a BadInput.
SIZE_POLICIES = ("resize", "pad", "reject")
DEFAULT_SIZE_POLICY = "resize"

# Pillow's own guard is 89 million pixels; larger images are refused, not decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class BadInput(ValueError):
  """One input (file, array entry, record) that cannot become a training image."""


class FeatureBytes(bytes):
  """The bytes of a TFRecord's image feature: an encoded image or raw uint8 pixels of the target
  shape. Only such bytes may be taken as raw pixels: a file's bytes that happen to number
  H x W x C (a text file, a cut PNG) are a bad input, never an image."""


def open_image(data: bytes, max_pixels=MAX_PIXELS) -> Image.Image:
  """Decodes image bytes fully (so truncation is found here), first frame, upright."""
  if not data:
    raise BadInput("empty file (0 bytes)")
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
      image = Image.open(io.BytesIO(data))
      if image.width * image.height > max_pixels:
        raise BadInput(f"{image.width}x{image.height} is {image.width * image.height:,} pixels, "
                       f"over the limit of {max_pixels:,} (decompression-bomb guard)")
      image.seek(0)
      image.load()
      image = ImageOps.exif_transpose(image)
    except BadInput:
      raise
    except Image.UnidentifiedImageError:
      raise BadInput("not an image (no known image format in its content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
      raise BadInput(f"too many pixels (decompression-bomb guard): {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
      raise BadInput(f"corrupt or truncated {getattr(image, 'format', None) or 'image'}: "
                     f"{error}") from None
  return image


def _to_8bit(image: Image.Image) -> Image.Image:
  """16- and 32-bit integer greyscale -> 8-bit `L`."""
  if image.mode == "F":
    raise BadInput("floating-point images are not supported")
  pixels = np.asarray(image)
  top = 65535.0 if pixels.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
  scaled = np.rint(pixels.astype(np.float64) * 255.0 / top)
  return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _drop_alpha(image: Image.Image) -> Image.Image:
  """RGBA (or LA) composited onto black -> RGB (or L)."""
  rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
  rgb = np.rint(rgba[..., :3] * rgba[..., 3:] / 255.0).astype(np.uint8)
  result = Image.fromarray(rgb, mode="RGB")
  return result.convert("L") if image.mode in ("LA", "La") else result


def to_colour(image: Image.Image, channels: int) -> Image.Image:
  """Any mode -> `L` (1 channel) or `RGB` (3 channels), by the rules in the module doc."""
  if image.mode.startswith("I") or image.mode == "F":
    image = _to_8bit(image)
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
    image = _drop_alpha(image)
  if image.mode not in ("L", "RGB"):
    image = image.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV ...
  return image.convert("L" if channels == 1 else "RGB")


def fit_size(image: Image.Image, height: int, width: int, policy=DEFAULT_SIZE_POLICY):
  if policy not in SIZE_POLICIES:
    raise ValueError(f"size policy must be one of {SIZE_POLICIES}, got {policy!r}")
  if (image.height, image.width) == (height, width):
    return image
  if policy == "reject":
    raise BadInput(f"size {image.height}x{image.width} differs from the target "
                   f"{height}x{width} (size policy 'reject')")
  if policy == "resize":
    return image.resize((width, height), Image.LANCZOS)
  scale = min(height / image.height, width / image.width)
  inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  canvas = Image.new(image.mode, (width, height))  # black
  canvas.paste(image.resize(inner, Image.LANCZOS),
               ((width - inner[0]) // 2, (height - inner[1]) // 2))
  return canvas


def to_array(image: Image.Image, image_shape, policy=DEFAULT_SIZE_POLICY) -> np.ndarray:
  """A decoded image -> uint8 [H, W, C] of the target shape."""
  height, width, channels = image_shape
  image = fit_size(to_colour(image, channels), height, width, policy)
  return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def array_to_image(pixels: np.ndarray) -> Image.Image:
  """One entry of an image array (IDX, NPZ, raw bytes): [H, W] or [H, W, C], values 0-255."""
  pixels = np.asarray(pixels)
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[..., 0]
  if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
    raise BadInput(f"array of shape {pixels.shape} is not an image ([H, W] or [H, W, 1|3|4])")
  if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
    raise BadInput(f"{int(np.sum(~np.isfinite(pixels)))} NaN or infinite values")
  low, high = pixels.min(), pixels.max()
  if low < 0 or high > 255:
    raise BadInput(f"values outside 0-255 (min {low:g}, max {high:g})")
  return Image.fromarray(np.rint(pixels).astype(np.uint8))


def png_bytes(pixels: np.ndarray) -> bytes:
  """uint8 [H, W, 1|3] (or [H, W]) -> PNG bytes, the stored form of every image."""
  pixels = np.asarray(pixels, dtype=np.uint8)
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def normalize(payload, image_shape, policy=DEFAULT_SIZE_POLICY, max_pixels=MAX_PIXELS):
  """What a source yields (image bytes, a TFRecord feature's encoded or raw uint8 pixel bytes,
  or an array) -> uint8 [H, W, C]."""
  if isinstance(payload, BadInput):
    raise payload
  if isinstance(payload, bytes):
    try:
      image = open_image(payload, max_pixels)
    except BadInput:
      height, width, channels = image_shape
      if not isinstance(payload, FeatureBytes) or len(payload) != height * width * channels:
        raise
      # Raw pixels (a TFRecord feature of uint8 arrays) of exactly the target shape.
      return np.frombuffer(payload, np.uint8).reshape(image_shape).copy()
  else:
    image = array_to_image(payload)
  return to_array(image, image_shape, policy)
