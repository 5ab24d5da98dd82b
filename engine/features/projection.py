"""Where a dataset's cached bottleneck vectors lie: a 2-D PCA for the Architectures page.

Reads only the feature cache (nothing is extracted), so it lives with the features it reads; the PCA
itself is `engine.models.explain.pca_2d`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data import datasets
from engine.features.cache import FeatureCache, file_hash, model_key
from engine.models import backbones
from engine.models.explain import pca_2d


@dataclass(frozen=True)
class Projection:
    points: np.ndarray  # (N, 2)
    labels: list[str]
    paths: list[str]
    explained: tuple[float, float]
    cached: int  # images of the dataset with a cached vector
    total: int


def cached_projection(
    folder: str | Path, name: str, weights: str = "imagenet", seed: int = 0
) -> Projection | None:
    """PCA of the dataset's bottleneck vectors that are already cached; None when fewer than 3.

    Nothing is extracted here: the vectors come from earlier runs on `folder` with `name`.
    ImageNet features are looked up only when the weights are on disk (no download is started).
    """
    if weights == "imagenet" and not backbones.weights_cached(name):
        return None
    data = datasets.scan_image_dir(folder)
    hashes = [file_hash(r.path) for r in data.records]
    found = FeatureCache().get_many(model_key(name, weights, seed), hashes)
    rows = [(found[h], r) for h, r in zip(hashes, data.records, strict=True) if h in found]
    if len(rows) < 3:
        return None
    points, ratio = pca_2d(np.stack([v for v, _ in rows]))
    return Projection(
        points=points,
        labels=[r.label for _, r in rows],
        paths=[r.path for _, r in rows],
        explained=(float(ratio[0]), float(ratio[1])),
        cached=len(rows),
        total=len(data.records),
    )
