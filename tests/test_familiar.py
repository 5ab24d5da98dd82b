"""None of these: on a real flowers run, unlike photos flagged, held-out flowers not; the run beside its int8.

One module-scoped run on the 200 real flower photos (MobileNet 0.25 ImageNet bottlenecks) serves every
test; the test that empties the bottleneck cache runs last.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.data import datasets
from engine.export import familiar, lineup
from engine.features.cache import FeatureCache
from engine.runs.folder import RunFolder
from engine.runs.retrain import RunConfig, retrain
from engine.training.config import TrainConfig

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
FLOWERS = ASSETS / "flower_photos_small_set"
SAMPLES = ASSETS / "sample_images"
WEIGHTS = ASSETS / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
OTHER_DOMAIN = ("grace_hopper.bmp", "cat.bmp", "bird.bmp")
HELD_OUT_FLAGGED_MAX = 0.25  # ~5% by construction (95th percentile); 19 test photos: measured 2 of 19
INT8_AGREEMENT_MIN = 0.95  # run vs its int8 export, top-1 on the 200 flowers: measured 197/200


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(LAB_HOME, KERAS_HOME, run id) of one trained flowers run."""
    if not (FLOWERS.is_dir() and WEIGHTS.is_file() and SAMPLES.is_dir()):
        pytest.skip(f"needs the shared offline assets in {ASSETS} (../shared/assets is absent here)")
    home, keras_home = tmp_path_factory.mktemp("familiar_lab"), tmp_path_factory.mktemp("familiar_keras")
    (keras_home / "models").mkdir()
    shutil.copy(WEIGHTS, keras_home / "models" / WEIGHTS.name)
    photos = shutil.copytree(FLOWERS, home / "flowers")  # a copy: one test changes it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(home))
        mp.setenv("KERAS_HOME", str(keras_home))
        config = RunConfig(source=str(photos), train=TrainConfig(steps=1000, eval_interval=100))
        yield home, keras_home, retrain(config).run_id


@pytest.fixture
def run_id(lab, monkeypatch):
    home, keras_home, rid = lab
    monkeypatch.setenv("LAB_HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    return rid


def _held_out(split: str) -> list[str]:
    data = datasets.scan_image_dir(FLOWERS, 10, 10)
    return [r.path for r in data.records if r.split == split]


def test_other_domain_flagged_held_out_flowers_mostly_not(run_id, capsys):
    strangers = familiar.judge(run_id, [SAMPLES / name for name in OTHER_DOMAIN])
    assert [v["unfamiliar"] for v in strangers] == [True, True, True], strangers
    assert all(v["distance"] > v["threshold"] and "Unlike" in v["note"] for v in strangers)
    held = familiar.judge(run_id, _held_out("test"))
    assert len(held) == 19
    rate = sum(v["unfamiliar"] for v in held) / len(held)
    flowers = familiar.judge(run_id, [SAMPLES / "classic-daisy.jpg", SAMPLES / "sunflower.bmp"])
    with capsys.disabled():
        print(f"\nfamiliar: other domain flagged 3/3; held-out flowers flagged {rate:.1%} of {len(held)}")
    assert rate <= HELD_OUT_FLAGGED_MAX
    assert [v["unfamiliar"] for v in flowers] == [False, False]
    assert "Like the run's training photos" in flowers[0]["note"]


def test_calibration_is_kept_in_the_run_folder_and_reused(run_id, monkeypatch):
    ref = familiar.reference(run_id)
    folder = RunFolder.of(run_id)
    stored = folder.familiarity()
    assert stored["model_key"] == ref.model_key and stored["calibrated_on"] == "validation"
    assert stored["threshold"] == pytest.approx(ref.threshold) and len(stored["train_hashes"]) == len(
        ref.train
    )

    def no_scan(*args, **kwargs):
        raise AssertionError("the stored calibration should be used, not a new scan")

    monkeypatch.setattr(datasets, "scan_image_dir", no_scan)
    again = familiar.reference(run_id)
    assert again.threshold == ref.threshold and again.train.shape == ref.train.shape


def test_calibration_for_another_cache_key_or_edited_is_made_again(run_id):
    folder = RunFolder.of(run_id)
    good = folder.familiarity()
    folder.write_familiarity(
        {**good, "model_key": "mobilenet_0.25_224|224|imagenet:other-weights", "threshold": 2}
    )
    assert familiar.reference(run_id).threshold == pytest.approx(good["threshold"])
    assert folder.familiarity()["model_key"] == good["model_key"]
    text = folder.familiarity_path.read_text().replace(
        f'"threshold": {good["threshold"]}', '"threshold": 1.9'
    )
    folder.familiarity_path.write_text(text)  # edited by hand: no longer what the lab recorded
    assert folder.familiarity() is None
    assert familiar.reference(run_id).threshold == pytest.approx(good["threshold"])


def test_run_and_its_int8_export_agree_side_by_side(run_id, capsys):
    choices = [lineup.parse_run_choice(run_id), lineup.parse_run_choice(f"{run_id}:tflite-int8")]
    classifiers = [lineup.load_choice(c) for c in choices]
    photos = sorted(str(p) for p in FLOWERS.glob("*/*.jpg"))
    result = lineup.side_by_side(classifiers, [*photos, SAMPLES / "grace_hopper.bmp"], top_k=3)
    agree = [result.agreement(i) == 1.0 for i in range(len(photos))]
    with capsys.disabled():
        print(f"\nside by side: keras and tflite-int8 agree on {sum(agree)}/{len(photos)} flower photos")
    assert sum(agree) / len(photos) >= INT8_AGREEMENT_MIN
    assert result.models == [c.title for c in choices] and result.models[1].endswith("(tflite-int8)")
    grace = result.predictions[-1]
    assert all(p.extra["familiar"]["unfamiliar"] for p in grace)  # both formats of the run say so
    entries = result.entries()
    assert len(entries) == 2 * len(result.photos)
    assert {"source", "model", "labels", "scores", "latency_ms", "familiar"} <= set(entries[-1])


def test_changed_dataset_cannot_calibrate_and_runs_are_offered(run_id, lab):
    offered = [c.key for c in lineup.available_choices()]
    assert offered == [f"run:{run_id}:keras", f"run:{run_id}:tflite-int8"]  # converted above
    folder = RunFolder.of(run_id)
    folder.write_familiarity({**folder.familiarity(), "model_key": "another"})  # forces a new scan
    extra = lab[0] / "flowers" / "daisy" / "extra_photo.jpg"
    shutil.copy(SAMPLES / "classic-tulip.jpg", extra)
    try:
        verdict = familiar.judge(run_id, [SAMPLES / "cat.bmp"])[0]
        assert verdict["unfamiliar"] is False and verdict["distance"] is None
        assert "is not the one it trained on" in verdict["note"]
    finally:
        extra.unlink()
    assert familiar.judge(run_id, [SAMPLES / "cat.bmp"])[0]["unfamiliar"] is True


def test_a_run_whose_bottlenecks_are_gone_cannot_judge(run_id):
    FeatureCache().clear()  # last test of the module: the cache stays empty
    verdicts = familiar.judge(run_id, [SAMPLES / "grace_hopper.bmp"])
    assert verdicts[0]["unfamiliar"] is False and verdicts[0]["distance"] is None
    assert "training bottlenecks are not cached" in verdicts[0]["note"]
