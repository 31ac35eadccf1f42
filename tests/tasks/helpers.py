"""Test images for the image tasks."""

from __future__ import annotations


def png(width: int, height: int, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(width, height, seed))).save(buffer, format="JPEG")
    return buffer.getvalue()
