"""Detection losses (fcos.py, retinanet.py) and distillation losses (distillation.py and one module
per loss family).

distillation.py is imported here, first, so that its registry ``DISTILLATION_LOSSES`` is filled
by its own imports of the family modules, in its order, whichever module of the package is
imported first.
"""
from msad_tf.losses import distillation as _distillation  # noqa: F401
