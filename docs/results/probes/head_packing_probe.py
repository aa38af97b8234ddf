"""Head packing probe (session 8): the FCOS head on all levels at once.

The levels are laid side by side on one canvas with one zero column between them, so a 3x3 SAME
conv sees the zero padding it sees per level; GroupNorm takes per-level statistics through level
masks (einsum). Prints the largest difference to the per-level head (exactness) and the median
ms of head forward + backward, per level and packed, interleaved in one run, and their ratio.
``packed_plain_gn_wrong`` uses one GroupNorm over the whole canvas (wrong statistics): the upper
bound of what packing could save. Usage: python docs/results/probes/head_packing_probe.py [256]
(default: the demo's 128-px levels, batch 8, 48 channels, 2 convs per tower).
"""
import os, time, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, tensorflow as tf, keras
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from msad_tf.modeling.head import FCOSHead

B, C, G = 8, 48, 8
sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
if len(sys.argv) > 1 and sys.argv[1] == "256":
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
head = FCOSHead(6, C, 2, G, 5)
feats = [tf.random.normal((B, h, w, C)) for h, w in sizes]
head(feats)

def layout(sizes):
    Hc = max(h for h, _ in sizes); x0 = 0; offs = []
    for h, w in sizes:
        offs.append(x0); x0 += w + 1
    Wc = x0 - 1
    M = np.zeros((len(sizes), Hc, Wc), np.float32)
    for l, ((h, w), o) in enumerate(zip(sizes, offs)):
        M[l, :h, o:o + w] = 1
    return Hc, Wc, offs, M

Hc, Wc, offs, Mnp = layout(sizes)
M = tf.constant(Mnp); valid = tf.reduce_sum(M, 0)[None, :, :, None]

def pack(feats):
    rows = []
    for l, (f, (h, w)) in enumerate(zip(feats, sizes)):
        f = tf.pad(f, [[0, 0], [0, Hc - h], [0, 0], [0, 0]])
        rows.append(f)
        if l < len(feats) - 1:
            rows.append(tf.zeros_like(f[:, :, :1]))
    return tf.concat(rows, 2)

def unpack(x):
    return [x[:, :h, o:o + w] for (h, w), o in zip(sizes, offs)]

def masked_gn(x, gn):
    Cx = x.shape[-1]; g = gn.groups
    xg = tf.reshape(x, (-1, Hc, Wc, g, Cx // g))
    n = tf.reduce_sum(M, [1, 2]) * (Cx // g)
    s = tf.einsum('bhwgk,lhw->blg', xg, M) / n[None, :, None]
    ss = tf.einsum('bhwgk,lhw->blg', xg * xg, M) / n[None, :, None]
    var = ss - s * s
    mean_map = tf.einsum('blg,lhw->bhwg', s, M)[..., None]
    inv_map = tf.einsum('blg,lhw->bhwg', tf.math.rsqrt(var + gn.epsilon), M)[..., None]
    y = tf.reshape((xg - mean_map) * inv_map, tf.shape(x))
    return (y * gn.gamma + gn.beta) * valid

def run_packed_tower(tower, x):
    for layer in tower:
        if isinstance(layer, keras.layers.GroupNormalization):
            x = masked_gn(x, layer)
        elif isinstance(layer, keras.layers.Conv2D):
            x = layer(x)
        else:
            x = layer(x)
    return x

def packed_head(feats):
    x = pack(feats)
    cls = run_packed_tower(head.cls_tower, x)
    box = run_packed_tower(head.box_tower, x)
    c, b, ctr = head.cls_logits(cls), head.box_pred(box), head.centerness(box)
    outs = []
    for i, (cc, bb, tt) in enumerate(zip(unpack(c), unpack(b), unpack(ctr))):
        outs.append({"cls_logits": cc, "box_reg": tf.nn.relu(head.scales[i] * bb), "centerness": tf.squeeze(tt, -1)})
    return outs

ref = head(feats); got = packed_head(feats)
for r, g in zip(ref, got):
    for k in r:
        print(k, r[k].shape, float(tf.reduce_max(tf.abs(r[k] - g[k]))))

def make_step(fn):
    @tf.function
    def step(feats):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            outs = fn(feats)
            loss = tf.add_n([tf.reduce_sum(o["cls_logits"]) + tf.reduce_sum(o["box_reg"]) + tf.reduce_sum(o["centerness"]) for o in outs])
        return tape.gradient(loss, head.trainable_variables + feats)
    return step
def packed_plain_gn(feats):
    global masked_gn
    saved = masked_gn
    masked_gn = lambda x, gn: gn(x) * valid
    try:
        return packed_head(feats)
    finally:
        masked_gn = saved

steps = {"per_level": make_step(head), "packed": make_step(packed_head), "packed_plain_gn_wrong": make_step(packed_plain_gn)}
for s in steps.values():
    s(feats)
times = {k: [] for k in steps}
for r in range(7):
    for k, s in steps.items():
        t = time.perf_counter()
        for _ in range(10):
            out = s(feats)
        _ = out[0].numpy()
        times[k].append((time.perf_counter() - t) / 10 * 1000)
for k, v in times.items():
    print(k, "median ms", np.median(v))
for k in ("packed", "packed_plain_gn_wrong"):
    print(f"ratio per_level/{k}", np.median(times["per_level"]) / np.median(times[k]))
