"""Image preprocessing shared by the input pipeline and the exported serving functions.

Everything here is pure TensorFlow and graph-friendly: sizes are tensors, so the functions work
inside ``tf.data`` maps and inside ``tf.function`` signatures with unknown image sizes.
Images are RGB on the 0..255 scale until ``normalize_image``.
"""
from __future__ import annotations

import tensorflow as tf

IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)


def normalize_image(image):
    """(image - IMAGE_MEAN) / IMAGE_STD.

    Args:
      image: uint8 or float [..., H, W, 3], RGB on the 0..255 scale.
    Returns:
      float32 [..., H, W, 3].
    """
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(IMAGE_MEAN, tf.float32)) / tf.constant(IMAGE_STD, tf.float32)


def resize_scale(height, width, short_side, max_side):
    """Scale of a shortest-edge resize capped by a longest-edge limit (Detectron2 semantics).

    Args:
      height, width: int or float scalars (Python or tensors), the original image size.
      short_side: target length of the short side.
      max_side: upper bound on the long side after resizing.
    Returns:
      float32 scalar tensor min(short_side / min(h, w), max_side / max(h, w)).
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    short_side = tf.cast(short_side, tf.float32)
    max_side = tf.cast(max_side, tf.float32)
    return tf.minimum(short_side / tf.minimum(h, w), max_side / tf.maximum(h, w))


def resized_size(height, width, scale):
    """int32 [2] (round(height * scale), round(width * scale)), at least 1 pixel each.

    Rounds half up, as Detectron2's ``int(x * scale + 0.5)``.
    """
    size = tf.cast(tf.stack([height, width]), tf.float32) * tf.cast(scale, tf.float32)
    return tf.maximum(tf.cast(tf.floor(size + 0.5), tf.int32), 1)


def resize_image(image, short_side, max_side):
    """Resizes so the short side is ``short_side`` unless the long side would exceed ``max_side``.

    Args:
      image: uint8 or float [H, W, 3] on the 0..255 scale.
      short_side, max_side: scalars (Python numbers or tensors) as in ``resize_scale``.
    Returns:
      (resized float32 [h', w', 3] on the 0..255 scale, scale float32 scalar) with
      h' = round(H * scale), w' = round(W * scale). Bilinear with antialiasing, so
      downsampling averages over the source pixels instead of skipping them.
    """
    shape = tf.shape(image)
    scale = resize_scale(shape[0], shape[1], short_side, max_side)
    size = resized_size(shape[0], shape[1], scale)
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    return resized, scale


def pad_to_multiple(images, multiple):
    """Pads images with zeros at the bottom and right up to the next multiple of ``multiple``.

    Args:
      images: [B, H, W, C] of any dtype.
      multiple: positive int (or int32 scalar tensor).
    Returns:
      [B, Hp, Wp, C] with Hp = ceil(H / multiple) * multiple (same for W); Hp, Wp are static
      when H, W and ``multiple`` are.
    """
    shape = tf.shape(images)
    pad_h = tf.math.floormod(-shape[1], multiple)
    pad_w = tf.math.floormod(-shape[2], multiple)
    padded = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    static = images.shape.as_list()
    for axis in (1, 2):
        if static[axis] is not None and isinstance(multiple, int):
            static[axis] = -(-static[axis] // multiple) * multiple
    padded.set_shape(static)
    return padded
