"""Makers of real image files (valid, odd and broken) for the ingestion tests."""
import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt="PNG", **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **options)
  return buffer.getvalue()


def gray(value=128, size=(28, 28)):
  return Image.fromarray(np.full(size, value, np.uint8), mode="L")


def noise(size=(28, 28), seed=0):
  """An image that does not compress, so cutting its file short cuts its pixel data."""
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8))


def truncated_png() -> bytes:
  data = encode(noise())
  return data[:len(data) // 2]


def png_claiming_size(width, height) -> bytes:
  """A tiny PNG whose header claims width x height (a decompression bomb's signature)."""
  data = bytearray(encode(gray(0, (4, 4))))
  ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
  data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
  crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 8 + 13])) & 0xFFFFFFFF
  data[ihdr + 21:ihdr + 25] = struct.pack(">I", crc)
  return bytes(data)


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX format of MNIST: magic (0, 0, 0x08 for uint8, ndim), big-endian dims, data."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(np.uint8).tobytes()
