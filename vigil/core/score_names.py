"""Every score a bundle's graph can compute: its name, what it measures, and which is primary.

Higher is more anomalous for every score. The computations are `training.scores`; the
names and descriptions, which the manifest and every response carry, are defined here.
"""

from __future__ import annotations

COMBINED = "combined"
# `combined` averages these, each log-transformed and standardised.
COMBINED_FROM = ("blurred", "ssim", "mahalanobis", "knn")
SPECTRUM = "spectrum"
LOCAL = "local"
DEFECT = "defect"
HEATMAP = "heatmap"
# The primary score: the largest of some of these, each standardised on the validation
# images (QUALITY_NOTES, "The primary score"). Without the local detectors it is
# `combined`. With them:
# - `heatmap` (the two local maps added pixel by pixel) always: best on single images;
# - `local` and `defect` on tiled frames only: among a frame's millions of pixels the two
#   maps' normal peaks coincide somewhere, and each map alone keeps what it sees (round 4);
#   on single images they only add their stray peaks to the max;
# - `combined`, the autoencoder's image-wide view and the only part that sees a whole
#   wrong object, where the normal images have a layout: at least LAYOUT_MIN of their
#   variation is their mean image's (an object in place: Fashion-MNIST's classes 0.26-0.72).
#   Crops of a texture have none (0.002: any crop is as normal as any other), and there
#   `combined` measures how busy a crop is, noise in the max that costs 0.01-0.03 of
#   AUROC a texture (QUALITY_NOTES, goal 1, round 9).
# Not `spectrum`: in the max it lowered Fashion-MNIST's AUROC by 0.01-0.02 a class (its
# normal tail is heavy); it has its own calibrated threshold in every response.
PRIMARY = "overall"
PRIMARY_FROM = (COMBINED, LOCAL, DEFECT, HEATMAP)
LAYOUT_MIN = 0.05
# Only a VAE's graph computes these.
VARIATIONAL_ONLY = frozenset({"kl"})
# Only a graph with the local detectors (inputs of 48 px and more by default) computes these.
LOCAL_ONLY = frozenset({LOCAL, DEFECT, HEATMAP})

SCORES: dict[str, str] = {
    "reconstruction": "mean squared error between the image and its reconstruction",
    "blurred": "mean squared error after a 5x5 Gaussian blur (sigma 1) of the error image",
    "ssim": "1 - mean structural similarity (SSIM, 7x7 Gaussian window) of image and "
    "reconstruction",
    "mahalanobis": "squared Mahalanobis distance of the latent code under the training codes, "
    "/ dim",
    "knn": "mean distance of the latent code to its 5 nearest training codes (scaled per dim)",
    SPECTRUM: "squared Mahalanobis distance of the image's camera features (log detail "
    "energies of three band-passes, gradients and coarse contrast; noise floor in its "
    "flattest twentieth; black and white levels; 8-px blockiness) under the training "
    "images', / dim: blur, lost contrast, exposure, noise and heavy JPEG move it",
    LOCAL: "maximum over the image of the smoothed local anomaly map (per-pixel features "
    "under Gaussians of normal pixels, standardised)",
    DEFECT: "maximum over the image of the defect head's logits (a small segmentation net "
    "trained on synthetic defects drawn on the normal images)",
    HEATMAP: f"maximum over the image of the anomaly map: {LOCAL}'s map and {DEFECT}'s logits, "
    "each standardised on the validation split, added pixel by pixel (what both see at one "
    "place adds up; their stray peaks on normal images rarely coincide)",
    "kl": "KL(q(z|x) || N(0, I)) summed over latent dimensions",
    COMBINED: f"mean of the log-scores of {', '.join(COMBINED_FROM)}, each standardised on the "
    "validation split",
    PRIMARY: f"max of {COMBINED} and {HEATMAP} ({LOCAL} and {DEFECT} too on tiled images; "
    f"{COMBINED} alone without the local detectors; without {COMBINED} where the normal "
    "images have no layout, as crops of a texture), each standardised on the validation split",
}


def score_names(variational: bool, local: bool = True) -> list[str]:
    """The scores a graph computes, in the order responses list them."""
    absent = (set() if variational else VARIATIONAL_ONLY) | (set() if local else LOCAL_ONLY)
    return [name for name in SCORES if name not in absent]


def primary_from(local: bool) -> tuple[str, ...]:
    """The scores `overall` may take the maximum of, each standardised."""
    return PRIMARY_FROM if local else PRIMARY_FROM[:1]


def overall_parts(local: bool, tiled: bool = False, layout: float = 1.0) -> tuple[str, ...]:
    """The scores `overall` takes the maximum of: for a graph with or without the local
    detectors, on tiles of large images or on whole ones, and normal images whose mean
    image holds `layout` of their variation (`training.scores.layout_share`)."""
    if not local:
        return (COMBINED,)
    chosen = {HEATMAP} | ({LOCAL, DEFECT} if tiled else set())
    if layout >= LAYOUT_MIN:
        chosen.add(COMBINED)
    return tuple(p for p in PRIMARY_FROM if p in chosen)


def describe_overall(parts: tuple[str, ...], layout: float | None = None) -> str:
    """What one bundle's `overall` is, for its manifest."""
    if len(parts) == 1:
        text = f"{parts[0]}, standardised on the validation split"
    else:
        names = f"{', '.join(parts[:-1])} and {parts[-1]}"
        text = f"max of {names}, each standardised on the validation split"
    if layout is not None and COMBINED not in parts:
        text += (f"; not {COMBINED}: the normal images have no layout (their mean image holds "
                 f"{layout:.1%} of their variation, under {LAYOUT_MIN:.0%}), as crops of a "
                 "texture")  # fmt: skip
    return text
