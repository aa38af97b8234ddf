"""Image preprocessing shared by the input pipeline and the exported serving functions.

Everything here is pure TensorFlow and graph-friendly: sizes are tensors, so the functions work
inside ``tf.data`` maps and inside ``tf.function`` signatures with unknown image sizes.
Images are RGB on the 0..255 scale until ``normalize_image``.

Decided here for every consumer (training pipeline, evaluation, predict, exports): ``input_norm``
(how pixels are normalised). How a resolution is made from the original image (resize, or resize
to H and then the strided subsample of training) is decided in ``msad_tf.resolution``
(``input_geometry``); ``network_input`` applies its stride.
"""
from __future__ import annotations

import tensorflow as tf

IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
INPUT_NORMS = ("imagenet_std", "caffe")


def resolve_input_norm(model_config) -> str:
    """The normalisation a model's input gets: ``model.input_norm``, with ``auto`` resolved to
    ``caffe`` when ``model.backbone_weights`` is keras.applications's ``imagenet`` (those
    weights expect caffe inputs) and ``imagenet_std`` otherwise (``msad pretrain`` weights are
    trained on it)."""
    norm = getattr(model_config, "input_norm", "auto")
    if norm == "auto":
        return "caffe" if model_config.backbone_weights == "imagenet" else "imagenet_std"
    if norm not in INPUT_NORMS:
        raise ValueError(f"input_norm '{norm}': choose auto, {' or '.join(INPUT_NORMS)}")
    return norm


def normalize_image(image, input_norm: str = "imagenet_std"):
    """Normalised network input.

    ``imagenet_std``: (RGB - IMAGE_MEAN) / IMAGE_STD. ``caffe`` (keras.applications ResNet
    ``preprocess_input``): channels reversed to BGR, CAFFE_MEAN_BGR subtracted, no scaling.

    Args:
      image: uint8 or float [..., H, W, 3], RGB on the 0..255 scale.
      input_norm: one of ``INPUT_NORMS`` (see ``resolve_input_norm``).
    Returns:
      float32 [..., H, W, 3].
    """
    image = tf.cast(image, tf.float32)
    if input_norm == "caffe":
        return tf.reverse(image, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    if input_norm != "imagenet_std":
        raise ValueError(f"input_norm '{input_norm}': choose {' or '.join(INPUT_NORMS)}")
    return (image - tf.constant(IMAGE_MEAN, tf.float32)) / tf.constant(IMAGE_STD, tf.float32)


def network_input(images, image_sizes, stride: int):
    """The network's view of a prepared batch: its strided subsample ``x[:, ::s, ::s, :]``.

    Args:
      images: [B, Hp, Wp, C] normalised, zero padded (``pad_to_multiple``) batch.
      image_sizes: int32 [B, 2] (or [2]) unpadded (h, w) of each image in ``images``.
      stride: s >= 1 (1: the batch itself).
    Returns:
      (images [B, ceil(Hp / s), ceil(Wp / s), C], image_sizes int32 ceil((h, w) / s)): the
      sizes the network's outputs are decoded with. Boxes decoded in this frame are in pixels
      of ``images`` once multiplied by s.
    """
    if stride == 1:
        return images, image_sizes
    sizes = tf.cast(image_sizes, tf.int32)
    return images[:, ::stride, ::stride, :], (sizes + (stride - 1)) // stride


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
