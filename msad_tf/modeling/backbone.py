"""ResNet backbones returning C1..C5 (strides 2, 4, 8, 16, 32).

Layer names follow keras.applications (``conv1_conv``, ``conv2_block1_1_conv``, ...) so a
width-1.0 ResNet-50/101 can take ImageNet weights from ``keras.applications`` by name. Any
backbone can instead load a ``.weights.h5`` file written by ``msad pretrain`` (the shipped ones
are in ``msad_tf/weights/``). Every
stride-2 op gives ceil(n / 2) outputs, so an input of any size and its stride-k subsample produce
aligned pyramids.
"""
from __future__ import annotations

from pathlib import Path

import keras

from msad_tf.modeling.norm import DETECTRON2_BN_MOMENTUM, BatchNorm

_STAGES = {
    "resnet_tiny": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
_APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101"}
_BN_EPSILON = 1.001e-5
APPLICATION_WEIGHTS = ("imagenet",)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def _norm(name: str, norm: str, momentum: float = DETECTRON2_BN_MOMENTUM, fused: bool = True):
    layer = (BatchNorm if fused else keras.layers.BatchNormalization)(
        momentum=momentum, epsilon=_BN_EPSILON, synchronized=(norm == "sync_bn"), name=name
    )
    if norm == "frozen_bn":
        layer.trainable = False
    return layer


def _conv(filters, kernel, stride, name):
    padding = "same" if stride == 1 else "valid"
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, use_bias=True, name=name
    )


def _strided(x, filters, kernel, stride, name):
    """Conv with stride 2 and explicit padding: output size ceil(n / 2) for any n."""
    if stride == 2 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
    return _conv(filters, kernel, stride, name)(x)


def _bottleneck(x, filters, stride, make_norm, name, project):
    shortcut = x
    if project:
        shortcut = _conv(4 * filters, 1, stride, name + "_0_conv")(x)
        shortcut = make_norm(name + "_0_bn")(shortcut)
    x = _conv(filters, 1, stride, name + "_1_conv")(x)
    x = make_norm(name + "_1_bn")(x)
    x = keras.layers.Activation("relu", name=name + "_1_relu")(x)
    x = _conv(filters, 3, 1, name + "_2_conv")(x)
    x = make_norm(name + "_2_bn")(x)
    x = keras.layers.Activation("relu", name=name + "_2_relu")(x)
    x = _conv(4 * filters, 1, 1, name + "_3_conv")(x)
    x = make_norm(name + "_3_bn")(x)
    x = keras.layers.Add(name=name + "_add")([shortcut, x])
    return keras.layers.Activation("relu", name=name + "_out")(x)


def _basic(x, filters, stride, make_norm, name, project):
    shortcut = x
    if project:
        shortcut = _conv(filters, 1, stride, name + "_0_conv")(x)
        shortcut = make_norm(name + "_0_bn")(shortcut)
    x = _strided(x, filters, 3, stride, name + "_1_conv")
    x = make_norm(name + "_1_bn")(x)
    x = keras.layers.Activation("relu", name=name + "_1_relu")(x)
    x = _conv(filters, 3, 1, name + "_2_conv")(x)
    x = make_norm(name + "_2_bn")(x)
    x = keras.layers.Add(name=name + "_add")([shortcut, x])
    return keras.layers.Activation("relu", name=name + "_out")(x)


def stage_channels(name: str, width: float) -> tuple[int, ...]:
    """Output channels of C2..C5 for a backbone name and width multiplier."""
    kind, _ = _STAGES[name]
    expansion = 4 if kind == "bottleneck" else 1
    return tuple(int(64 * width) * 2**i * expansion for i in range(4))


def build_resnet(
    name: str = "resnet50", width: float = 1.0, norm: str = "sync_bn", weights: str | None = None,
    bn_momentum: float = DETECTRON2_BN_MOMENTUM, fused_bn: bool = True,
) -> keras.Model:
    """Functional ResNet: images [B, H, W, 3] -> [C1, C2, C3, C4, C5].

    C1 has stride 2 (stem conv), C2..C5 strides 4..32 with ``stage_channels(name, width)``
    channels. ``bn_momentum`` is Keras's (0.9 = PyTorch's 0.1, Detectron2's default).
    ``weights="imagenet"`` loads keras.applications weights by layer name (width 1.0
    ResNet-50/101 only; needs a network the first time); any other value is a file written by
    ``msad pretrain`` for this backbone and width (``resolve_backbone_weights``).
    """
    if name not in _STAGES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(_STAGES)}")
    if weights in APPLICATION_WEIGHTS and (name not in _APPLICATIONS or width != 1.0):
        raise ValueError(
            f"{weights} weights are available for width-1.0 {', '.join(_APPLICATIONS)} only, "
            f"not {name} at width {width} (`msad pretrain` makes weights for any backbone)"
        )
    kind, blocks = _STAGES[name]

    def make_norm(layer_name):
        return _norm(layer_name, norm, bn_momentum, fused_bn)

    block_fn = _bottleneck if kind == "bottleneck" else _basic
    base = int(64 * width)
    inputs = keras.Input((None, None, 3), name="images")
    x = _strided(inputs, base, 7, 2, "conv1_conv")
    x = make_norm("conv1_bn")(x)
    c1 = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(c1)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    outputs = [c1]
    in_channels = base
    for stage, count in enumerate(blocks):
        filters = base * 2**stage
        out_channels = filters * (4 if kind == "bottleneck" else 1)
        for block in range(count):
            stride = 2 if (block == 0 and stage > 0) else 1
            project = block == 0 and (stride != 1 or in_channels != out_channels)
            x = block_fn(x, filters, stride, make_norm, f"conv{stage + 2}_block{block + 1}", project)
            in_channels = out_channels
        outputs.append(x)
    model = keras.Model(inputs, outputs, name=f"{name}_w{width}")
    if weights in APPLICATION_WEIGHTS:
        load_application_weights(model, name, weights)
    elif weights is not None:
        load_backbone_weights(model, resolve_backbone_weights(weights))
    return model


def save_backbone_weights(model: keras.Model, path) -> None:
    """Every weighted layer of ``model`` as HDF5 group ``<layer name>`` with datasets ``0..n-1``
    (that layer's ``get_weights()``)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model"] = model.name
        for layer in model.layers:
            if layer.weights:
                group = f.create_group(layer.name)
                for i, array in enumerate(layer.get_weights()):
                    group.create_dataset(str(i), data=array)


def load_backbone_weights(model: keras.Model, path) -> None:
    """Set every weighted layer of ``model`` from a ``save_backbone_weights`` file; raises
    ValueError unless the file holds exactly those layers with those shapes."""
    import h5py

    with h5py.File(path, "r") as f:
        layers = [layer for layer in model.layers if layer.weights]
        names = {layer.name for layer in layers}
        if set(f.keys()) != names or any(
            [f[layer.name][str(i)].shape for i in range(len(layer.weights))]
            != [tuple(w.shape) for w in layer.weights] for layer in layers
        ):
            raise ValueError(
                f"backbone weights {path} (made for {f.attrs.get('model', '?')}) do not fit "
                f"{model.name}"
            )
        for layer in layers:
            layer.set_weights([f[layer.name][str(i)][()] for i in range(len(layer.weights))])


def resolve_backbone_weights(weights: str) -> str:
    """A file of backbone weights: ``weights`` if it is a file, else the shipped
    ``msad_tf/weights/<weights>.weights.h5``."""
    path = Path(weights)
    if path.is_file():
        return str(path)
    name = weights if weights.endswith(".weights.h5") else weights + ".weights.h5"
    shipped = WEIGHTS_DIR / name
    if shipped.is_file():
        return str(shipped)
    available = sorted(p.name[: -len(".weights.h5")] for p in WEIGHTS_DIR.glob("*.weights.h5"))
    raise FileNotFoundError(
        f"backbone weights '{weights}': no such file and not one of the shipped ones "
        f"({', '.join(available) or 'none'}); `msad pretrain` makes them"
    )


def load_application_weights(model: keras.Model, name: str, weights: str) -> int:
    """Copy keras.applications weights into ``model`` by layer name; returns layers copied."""
    app = getattr(keras.applications, _APPLICATIONS[name])(
        include_top=False, weights=weights, input_shape=(None, None, 3)
    )
    copied = copy_weights_by_name(app, model)
    if copied == 0:
        raise ValueError(f"no layer names matched keras.applications.{_APPLICATIONS[name]}")
    return copied


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy the weights of every layer of ``source`` into the layer of ``target`` with the same
    name; returns the number of layers copied."""
    layers = {layer.name: layer for layer in source.layers if layer.weights}
    copied = 0
    for layer in target.layers:
        if layer.name in layers:
            layer.set_weights(layers[layer.name].get_weights())
            copied += 1
    return copied
