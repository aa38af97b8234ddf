"""Resolution, branch and pyramid shift: the one place that decides them.

A model is trained, evaluated and deployed at named resolutions: ``high`` (H) and ``low``
(L = H / k). For a model and a resolution name this module says
- how the images are made (``input_geometry``: resize target and subsample stride),
- which pyramid shift the model reads (``shift_for``: m = log2(k) for an aligned model at L),
- which inference branches are evaluated and how their rows are labelled (``branches_for``),
- which (branch, shift) a multi-branch teacher runs for a request (``resolve_branch``),
- the resolution a trained run is deployed at (``deploy_resolution``).
Evaluation, sweep, predict, export and the CLI all ask here; the model classes' ``shift_for``,
``resolve_branch`` and ``inference_branches`` methods delegate here.
"""
from __future__ import annotations

RESOLUTIONS = ("high", "low")
INFERENCE_BRANCHES = ("fused", "high", "low")


def check_resolution(resolution: str) -> str:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution '{resolution}': choose high or low")
    return resolution


def input_geometry(config, resolution: str) -> tuple[int, int, int]:
    """How the images of ``resolution`` are made: (short_side, max_side, stride).

    The original image is resized to short_side/max_side (``resize_image``), normalised and
    zero padded; the network then reads ``network_input`` of that batch with ``stride``.
    ``high``: (H sides, 1). ``low`` with ``eval.low_input`` ``subsample`` (the operator every
    model trains its low-resolution branch on): (H sides, k). ``low`` with ``resize``: (L sides,
    1), an antialiased resize straight to L = H / k.
    """
    if check_resolution(resolution) == "high":
        return (*config.high_resolution(), 1)
    if config.eval.low_input == "subsample":
        return (*config.high_resolution(), int(config.model.k))
    return (*config.low_resolution(), 1)


def is_multi_branch(model) -> bool:
    """Whether ``model`` has fused / high / low inference branches (a multi-scale teacher)."""
    return bool(getattr(model, "multi_branch", False))


def shift_for(model, resolution: str) -> int:
    """Pyramid shift ``model`` reads at ``resolution``: m for a model that reads the aligned
    levels (aligned training, a teacher, an MSAD student) at L, else 0."""
    if check_resolution(resolution) == "low" and model.reads_shifted_levels:
        return int(model.pyramid.shift)
    return 0


def branches_for(model, resolution: str) -> list[tuple[str, str | None]]:
    """(row label, inference branch) pairs evaluated for ``model`` at ``resolution``: one row
    ``(resolution, None)`` for a single-branch model; a teacher gives ``fused`` and
    ``high@high`` at H and ``low@low`` at L."""
    check_resolution(resolution)
    if not is_multi_branch(model):
        return [(resolution, None)]
    branches = ("fused", "high") if resolution == "high" else ("low",)
    return [(f"{b}@{resolution}" if b != "fused" else "fused", b) for b in branches]


def resolve_branch(model, branch: str | None, shift: int | None) -> tuple[str, int]:
    """(branch, shift) a teacher's ``detect`` runs.

    ``branch`` None means ``fused`` for shift None/0 and ``low`` for a non-zero shift, so
    callers that only pass ``shift_for(model, resolution)`` get the right branch. ``fused``
    always reads shift 0 (P3..P7 of the input and the shifted levels of its subsample); ``high``
    defaults to shift 0 and ``low`` to shift m.
    """
    if branch is None:
        branch = "fused" if not shift else "low"
    if branch not in INFERENCE_BRANCHES:
        raise ValueError(f"branch '{branch}': choose one of {', '.join(INFERENCE_BRANCHES)}")
    if branch == "fused":
        if shift:
            raise ValueError(
                f"the fused branch takes the high-resolution input (shift 0), got shift {shift}"
            )
        return branch, 0
    if shift is None:
        shift = 0 if branch == "high" else model.pyramid.shift
    return branch, int(shift)


def deploy_resolution(model, config) -> str:
    """The resolution a run is deployed at: the model's ``deploy_resolution`` attribute if it has
    one, ``low`` for a student of a low-res input (or a single-resolution model trained on
    low-res input), else ``high``."""
    resolution = getattr(model, "deploy_resolution", None)
    if resolution:
        return check_resolution(resolution)
    mode = config.train.mode
    if (mode == "student" and config.train.student_input == "low") or (
        mode == "single" and config.train.input == "low"
    ):
        return "low"
    return "high"
