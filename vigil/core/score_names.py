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
# The primary score: whichever of `combined` (image-wide), `local`, `defect` and `heatmap`
# (their sum, pixel by pixel) is strongest. `heatmap` alone is best on 64x64 crops but lost
# on megapixel frames, where the two maps' normal peaks coincide somewhere among millions
# of pixels; `local` and `defect` keep what each sees alone (QUALITY_NOTES, round 4).
# Not `spectrum`: in the max it lowered Fashion-MNIST's AUROC by 0.01-0.02 a class (its
# normal tail is heavy); it has its own calibrated threshold in every response.
PRIMARY = "overall"
PRIMARY_FROM = (COMBINED, LOCAL, DEFECT, HEATMAP)
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
    PRIMARY: f"max of {COMBINED}, {LOCAL}, {DEFECT} and {HEATMAP} (those the graph has), each "
    "standardised on the validation split",
}


def score_names(variational: bool, local: bool = True) -> list[str]:
    """The scores a graph computes, in the order responses list them."""
    absent = (set() if variational else VARIATIONAL_ONLY) | (set() if local else LOCAL_ONLY)
    return [name for name in SCORES if name not in absent]


def primary_from(local: bool) -> tuple[str, ...]:
    """The scores `overall` is the maximum of (each standardised)."""
    return PRIMARY_FROM if local else PRIMARY_FROM[:1]
