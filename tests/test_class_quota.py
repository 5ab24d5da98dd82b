"""Upload quota per display name in class mode (LAB_SERVE_MODE=class, LAB_USER_QUOTA_MB)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine import config
from engine.data import archives, quota, uploads
from engine.errors import DatasetError, LabError, UnsafeArchive


def noise_png(seed: int, side: int = 256) -> bytes:
    """An incompressible image of about side * side * 3 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def files(seed: int, n: int = 2) -> dict[str, list[tuple[str, bytes]]]:
    return {
        "a": [(f"a{i}.png", noise_png(seed * 100 + i)) for i in range(n)],
        "b": [("b.png", noise_png(seed))],
    }


@pytest.fixture
def class_mode(lab_home, monkeypatch):
    monkeypatch.setenv("LAB_SERVE_MODE", "class")
    monkeypatch.setenv("LAB_USER_QUOTA_MB", "1")  # each upload below is ~0.6 MB


def test_local_mode_has_no_per_name_quota(lab_home, monkeypatch):
    monkeypatch.delenv("LAB_SERVE_MODE", raising=False)
    assert config.user_quota_bytes() is None and quota.upload_quota("mine", "ana") is None
    assert quota.owner_of("mine") is None  # nothing claimed outside class mode


def test_each_name_has_its_own_allowance(class_mode):
    first = uploads.save_class_images("ana-1", files(1), quota=quota.upload_quota("ana-1", "ana"))
    assert first.saved == {"a": 2, "b": 1} and quota.owner_of("ana-1") == "ana"
    assert 500_000 < quota.used_by("ana") < 1024**2
    # a second set would take ana past 1 MB: what fits lands, the rest is refused naming the quota
    second = uploads.save_class_images("ana-2", files(2), quota=quota.upload_quota("ana-2", "ana"))
    assert second.refused and all("quota" in reason for _, reason in second.refused)
    assert sum(second.saved.values()) + len(second.refused) == 3 and quota.used_by("ana") <= 1024**2
    with pytest.raises(DatasetError, match="quota"):  # now full: nothing lands
        uploads.save_class_images("ana-2", files(4), quota=quota.upload_quota("ana-2", "ana"))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for label, items in files(3).items():
            for name, data in items:
                zf.writestr(f"{label}/{name}", data)
    with pytest.raises(UnsafeArchive, match="quota"):
        archives.extract_zip(zipped.getvalue(), "ana-3", quota=quota.upload_quota("ana-3", "ana"))
    # ben is not held back by what ana uploaded
    path = archives.extract_zip(zipped.getvalue(), "ben-1", quota=quota.upload_quota("ben-1", "ben"))
    assert sorted(p.name for p in path.iterdir()) == ["a", "b"] and quota.owner_of("ben-1") == "ben"
    assert quota.used_by(None) == 0
    # the owners' records are never listed as a dataset
    assert set(uploads.stored_datasets()) == {"uploads/ana-1", "uploads/ana-2", "uploads/ben-1"}


def test_a_dataset_stays_with_its_first_owner(class_mode):
    assert quota.claim("shared", "ana") == "ana"
    assert quota.claim("shared", "ben") == "ana"
    assert quota.owner_of("shared") == "ana" and quota.claim("other", None) == quota.UNNAMED


def test_bad_setting(class_mode, monkeypatch):
    monkeypatch.setenv("LAB_USER_QUOTA_MB", "lots")
    with pytest.raises(LabError, match="LAB_USER_QUOTA_MB must be a whole number >= 0"):
        quota.upload_quota("x", "ana")
