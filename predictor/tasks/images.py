"""Images in requests: read and checked on the event loop (header only), decoded on the inference thread."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kserve.errors import InvalidInput

MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent, checked far enough to reject bad data on the event loop (header only)."""

    data: bytes
    format: str
    size: tuple[int, int]

    def decode(self):
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as image:
            return image.convert("RGB")


class ImageError(Exception):
    """An image that passed the header check but failed to decode (answered 400 for its request)."""


def read_image(value: bytes | str, where: str) -> EncodedImage:
    """Accept raw image bytes or base64 text (also as a data URL); check the header, not the pixels."""
    from PIL import Image, UnidentifiedImageError

    data = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    candidates = [data]
    text = data.strip()
    if text.startswith(b"data:") and b"," in text:
        text = text.split(b",", 1)[1]
    try:
        candidates.insert(0, base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        pass
    for candidate in candidates:
        if len(candidate) > MAX_IMAGE_BYTES:
            raise InvalidInput(f"{where} is larger than {MAX_IMAGE_BYTES} bytes")
        try:
            with Image.open(io.BytesIO(candidate)) as image:
                size, image_format = image.size, image.format or "unknown"
        except (UnidentifiedImageError, OSError, ValueError):
            continue
        if size[0] < 1 or size[1] < 1 or size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise InvalidInput(f"{where}: image size {size[0]}x{size[1]} is outside 1..{MAX_IMAGE_PIXELS} pixels")
        return EncodedImage(candidate, image_format, size)
    raise InvalidInput(f"{where} is not a readable image (send PNG/JPEG bytes, or base64 of them in JSON)")


def v1_image(instance: Any, where: str) -> EncodedImage:
    """A v1 instance: base64 string, ``{"b64": ...}``, ``{"image": ...}`` or ``{"image": {"b64": ...}}``."""
    if isinstance(instance, dict) and set(instance) <= {"image", "b64"} and len(instance) == 1:
        instance = instance.get("image", instance.get("b64"))
    if isinstance(instance, dict) and set(instance) == {"b64"}:
        instance = instance["b64"]
    if not isinstance(instance, str):
        raise InvalidInput(f"{where} must be a base64 image string, {{'b64': ...}} or {{'image': ...}}")
    return read_image(instance, where)


def decode_images(images: Sequence[EncodedImage]) -> tuple[list, list[int], dict[int, ImageError]]:
    """Decode on the inference thread; a bad image only fails its own request."""
    decoded, positions, errors = [], [], {}
    for index, image in enumerate(images):
        try:
            decoded.append(image.decode())
            positions.append(index)
        except Exception as error:  # PIL raises many types for truncated or corrupt data
            errors[index] = ImageError(f"image could not be decoded ({image.format}): {error}")
    return decoded, positions, errors


def raise_image_errors(results: Sequence[Any]) -> None:
    for index, result in enumerate(results):
        if isinstance(result, ImageError):
            raise InvalidInput(f"image[{index}]: {result}")


def warmup_image() -> EncodedImage:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (127, 127, 127)).save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), "PNG", (64, 48))
