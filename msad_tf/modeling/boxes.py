"""Location grids and (l, t, r, b) box coding. Boxes are [ymin, xmin, ymax, xmax] in pixels."""
from __future__ import annotations

import tensorflow as tf


def level_locations(height, width, stride: int):
    """Centres of a level's cells in input pixels: [h*w, 2] (y, x) = index * stride + stride // 2."""
    ys = tf.cast(tf.range(height) * stride + stride // 2, tf.float32)
    xs = tf.cast(tf.range(width) * stride + stride // 2, tf.float32)
    yy, xx = tf.meshgrid(ys, xs, indexing="ij")
    return tf.reshape(tf.stack([yy, xx], axis=-1), [-1, 2])


def pyramid_locations(sizes, strides):
    """Concatenated locations of all levels.

    Args:
      sizes: list of (h_i, w_i) per level (ints or scalar tensors).
      strides: list of ints, one per level.
    Returns:
      locations [L, 2] (y, x), location strides [L] float32, level index [L] int32.
    """
    locs, loc_strides, loc_levels = [], [], []
    for i, ((h, w), stride) in enumerate(zip(sizes, strides)):
        points = level_locations(h, w, stride)
        n = tf.shape(points)[0]
        locs.append(points)
        loc_strides.append(tf.fill([n], float(stride)))
        loc_levels.append(tf.fill([n], i))
    return tf.concat(locs, 0), tf.concat(loc_strides, 0), tf.concat(loc_levels, 0)


def decode_ltrb(locations, ltrb, strides):
    """Stride-normalised distances to boxes.

    Args:
      locations: [..., L, 2] (y, x); ltrb: [..., L, 4]; strides: [L] or broadcastable.
    Returns:
      boxes [..., L, 4] as [ymin, xmin, ymax, xmax].
    """
    d = ltrb * strides[..., None]
    y, x = locations[..., 0], locations[..., 1]
    return tf.stack([y - d[..., 1], x - d[..., 0], y + d[..., 3], x + d[..., 2]], axis=-1)


def giou_loss_ltrb(pred, target):
    """Generalised IoU loss 1 - GIoU between boxes that share a location: [..., 4] -> [...].

    Both boxes are (l, t, r, b) distances from the same point, so intersection and enclosure
    are sums of per-side minima and maxima.
    """
    pl, pt, pr, pb = tf.unstack(pred, axis=-1)
    tl, tt, tr, tb = tf.unstack(target, axis=-1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (tf.minimum(pl, tl) + tf.minimum(pr, tr)) * (tf.minimum(pt, tt) + tf.minimum(pb, tb))
    union = pred_area + target_area - inter
    enclose = (tf.maximum(pl, tl) + tf.maximum(pr, tr)) * (tf.maximum(pt, tt) + tf.maximum(pb, tb))
    eps = 1e-7
    iou = inter / (union + eps)
    giou = iou - (enclose - union) / (enclose + eps)
    return 1.0 - giou
