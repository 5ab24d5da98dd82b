"""The architecture counter: published figures, hand-computed small models, every registry entry."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import InvalidArgument, NotFound
from engine.features import projection
from engine.models import architecture, backbones, block_names, blocks, explain, macs

REQUIRED = {  # the figures: MACs per image, ImageNet classifier included
    "mobilenet_1.0_224": 569e6,
    "mobilenet_0.25_224": 41e6,
    "mobilenet_v2_1.0_224": 300e6,
    "inception_v3": 5.7e9,
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_figures_within_5_percent(name):
    arch = architecture.analyze(name)
    assert arch.imagenet_top["macs"] == pytest.approx(REQUIRED[name], rel=0.05)
    # the top adds at most ~1 M MACs, so the backbone alone is within 5 % as well
    assert arch.macs == pytest.approx(REQUIRED[name], rel=0.05)
    assert arch.macs < arch.imagenet_top["macs"]


@pytest.mark.parametrize("name", sorted(explain.PUBLISHED))
def test_published_macs_and_params(name):
    pub = explain.PUBLISHED[name]
    top = architecture.analyze(name).imagenet_top
    assert top["macs"] == pytest.approx(pub["macs"], rel=0.05)
    # published params are rounded to 0.1 M (0.25 MobileNet: 0.5 M for 0.48 M)
    assert abs(top["params"] - pub["params"]) <= max(0.05 * pub["params"], 0.05e6)


def test_published_params_need_the_top():
    # the convention check: MobileNet's 4.2 M params include its 1000-way FC layer
    arch = architecture.analyze("mobilenet_1.0_224")
    assert arch.params == pytest.approx(3.2e6, rel=0.02)
    assert arch.imagenet_top["params"] == pytest.approx(4.2e6, rel=0.02)
    assert arch.imagenet_top["params"] - arch.params == 1024 * 1000 + 1000


def test_mobilenet_spends_95_percent_in_pointwise_convs():
    arch = architecture.analyze("mobilenet_1.0_224")
    assert arch.macs_by_kind["pointwise"] / arch.macs == pytest.approx(0.95, abs=0.01)  # paper, Table 2
    assert arch.depth == 27 and arch.imagenet_top["depth"] == 28  # paper: 28 layers


def test_hand_computed_small_model():
    import keras

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(6, 1, name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    model = keras.Model(inputs, outputs)
    records = {r["name"]: r for r in architecture.records_of(model)}

    assert records["conv"]["kind"] == "conv"
    assert records["conv"]["macs"] == 8 * 8 * 4 * (3 * 3 * 3)
    assert records["conv"]["params"] == 3 * 3 * 3 * 4 + 4
    assert records["dw"]["kind"] == "depthwise"
    assert records["dw"]["macs"] == 4 * 4 * 4 * (3 * 3)  # stride 2: 8x8 -> 4x4
    assert records["pw"]["kind"] == "pointwise"
    assert records["pw"]["macs"] == 4 * 4 * 6 * 4
    assert records["fc"]["kind"] == "dense" and records["fc"]["macs"] == 6 * 5
    assert records["bn"]["kind"] == "other" and records["bn"]["macs"] == 0
    assert records["bn"]["params"] == 16 and records["bn"]["trainable_params"] == 8  # gamma, beta
    assert records["bn"]["other_ops"] == 8 * 8 * 4
    assert sum(r["params"] for r in records.values()) == model.count_params()
    assert records["pw"]["inbound"] == ["dw"]


def test_grouped_conv_and_macs_helpers():
    assert macs.count_macs("Conv2D", (10, 10, 8), (10, 10, 16), (3, 3), groups=4) == 100 * 16 * 9 * 2
    assert macs.count_macs("Dense", (7, 7, 32), (7, 7, 10), units=10) == 49 * 32 * 10
    assert macs.count_macs("ReLU", (4, 4, 4), (4, 4, 4)) == 0
    assert macs.layer_kind("Conv2D", (1, 1)) == "pointwise"
    assert macs.layer_kind("Conv2D", (1, 7)) == "conv"
    assert macs.separable_reduction(3, 512) == pytest.approx(1 / 512 + 1 / 9)


@pytest.mark.parametrize("name", backbones.list_backbones())
def test_registry_entry_matches_built_model(name):
    """Declared input size and feature dimension against the model as Keras builds it."""
    entry = backbones.get_backbone(name)
    arch = architecture.analyze(name)  # its records come from build_backbone(name, "random")
    assert arch.layers[0].op == "InputLayer"
    assert arch.layers[0].output_shape == entry.input_shape
    assert arch.layers[-1].output_shape == (entry.feature_dim,)
    assert arch.bottleneck_shape[-1] == entry.feature_dim
    assert arch.blocks[0].name == "stem" and arch.blocks[-1].name == "head"
    assert len(arch.blocks) > 3
    # blocks are contiguous in model.layers, so "top N blocks" is "top K layers" for fine-tuning
    order = [r.block for r in arch.layers if r.is_layer]
    runs = [b for i, b in enumerate(order) if i == 0 or b != order[i - 1]]
    assert len(runs) == len(set(runs))
    assert sum(b.params for b in arch.blocks) == arch.params


def test_cache_is_json_and_reused(lab_home, monkeypatch):
    architecture.clear_memory("mobilenet_0.25_128")  # earlier tests built into their own LAB_HOME
    architecture.analyze("mobilenet_0.25_128")
    files = list((lab_home / "cache" / "architecture").glob("mobilenet_0.25_128-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["records"] and data["imagenet_top"]["params"] > 0
    architecture.clear_memory("mobilenet_0.25_128")
    monkeypatch.setattr(architecture, "_build", lambda name: pytest.fail("rebuilt despite the cache"))
    again = architecture.analyze("mobilenet_0.25_128")
    assert again.params == data["imagenet_top"]["params"] - (256 * 1000 + 1000)


def test_blocks_per_family():
    v1 = architecture.analyze("mobilenet_1.0_224")
    assert [b.name for b in v1.blocks] == ["stem", *[f"block_{i}" for i in range(1, 14)], "head"]
    v2 = architecture.analyze("mobilenet_v2_1.0_224")
    assert [b.name for b in v2.blocks][1:4] == ["block_0", "block_1", "block_2"]
    assert v2.blocks[-2].name == "block_16" and v2.block("head").params > 0  # Conv_1 1x1 to 1280
    inc = architecture.analyze("inception_v3")
    assert [b.name for b in inc.blocks] == ["stem", *[f"mixed{i}" for i in range(11)], "head"]
    assert inc.block("stem").output_shape == (35, 35, 192)
    eff = architecture.analyze("efficientnet_b0")
    assert eff.blocks[1].name == "block1a" and eff.blocks[-2].name == "block7a"


def test_depthwise_separable_arithmetic():
    arch = architecture.analyze("mobilenet_1.0_224")
    block = blocks.separable_block(arch, "block_7")
    assert block.style == "depthwise_separable" and not block.residual
    assert block.input_shape == (14, 14, 512) and block.output_shape == (14, 14, 512)
    assert block.standard_macs == 14 * 14 * 3 * 3 * 512 * 512
    assert block.depthwise_macs == 14 * 14 * 3 * 3 * 512
    assert block.pointwise_macs == 14 * 14 * 512 * 512
    assert 1 / block.reduction == pytest.approx(block.paper_ratio)  # 1/N + 1/k^2
    assert block.reduction == pytest.approx(8.84, abs=0.01)
    with pytest.raises(InvalidArgument, match="block_1"):
        blocks.separable_block(arch, "mixed0")


def test_inverted_residual_arithmetic():
    arch = architecture.analyze("mobilenet_v2_1.0_224")
    block = blocks.separable_block(arch, "block_2")
    assert block.style == "inverted_residual" and block.residual and block.expansion == 6
    assert [s.label for s in block.steps] == ["1×1", "3×3 depthwise", "1×1", "add"]
    expand, dw, project = 56 * 56 * 24 * 144, 56 * 56 * 9 * 144, 56 * 56 * 144 * 24
    assert block.macs == expand + dw + project
    assert block.wide_standard_macs == expand + 56 * 56 * 9 * 144 * 144 + project
    assert not blocks.separable_block(arch, "block_1").residual  # stride 2


def test_inception_module_branches():
    arch = architecture.analyze("inception_v3")
    module = blocks.inception_module(arch, "mixed0")
    assert module.input_shape == (35, 35, 192) and module.output_shape == (35, 35, 256)
    assert [b.label for b in module.branches] == ["1×1", "1×1 → 5×5", "1×1 → 3×3 → 3×3", "avg pool 3×3 → 1×1"]
    assert [b.out_channels for b in module.branches] == [64, 64, 96, 32]
    assert sum(b.out_channels for b in module.branches) == 256
    assert sum(b.macs for b in module.branches) == module.macs
    assert module.branches[0].macs == 35 * 35 * 192 * 64
    mixed9 = blocks.inception_module(arch, "mixed9")
    assert mixed9.branches[1].label == "1×1 → (1×3 ‖ 3×1)"
    assert blocks.inception_module(arch, "mixed5").branches[1].label == "1×1 → 1×7 → 7×1"
    with pytest.raises(InvalidArgument):
        blocks.inception_module(architecture.analyze("mobilenet_0.25_224"))


def test_freeze_plan():
    arch = architecture.analyze("mobilenet_0.25_224")
    frozen = explain.freeze_plan("mobilenet_0.25_224", 0, num_classes=5)
    assert frozen.trainable_params == 256 * 5 + 5 and frozen.uses_feature_cache
    assert frozen.fine_tune_layers == 0 and frozen.step_macs_per_image == 3 * 256 * 5
    two = explain.freeze_plan("mobilenet_0.25_224", 2, num_classes=5)
    assert two.blocks == ["block_13", "head"]
    assert two.fine_tune_layers == 2  # conv_dw_13 and conv_pw_13: TrainConfig.fine_tune_layers' unit
    assert two.trainable_params == frozen.trainable_params + 3 * 3 * 256 + 256 * 256  # no biases
    assert two.step_macs_per_image > arch.macs
    everything = explain.freeze_plan("mobilenet_0.25_224", len(arch.blocks), num_classes=5)
    assert everything.fine_tune_layers == arch.depth
    with pytest.raises(InvalidArgument, match="unfrozen_blocks=99"):
        explain.freeze_plan("mobilenet_0.25_224", 99)


def test_bottleneck_and_label_image():
    b = explain.bottleneck("inception_v3")
    assert b.layer == "mixed10" and b.map_shape == (8, 8, 2048)
    assert b.compression == pytest.approx(299 * 299 * 3 / 2048)
    mobilenet = explain.label_image_args("mobilenet_1.0_224")
    assert mobilenet["TF1 input tensor"] == "input:0"
    assert "--input_mean=127.5 --input_std=127.5" in mobilenet["TF1 label_image flags"]
    inception = explain.label_image_args("inception_v3")
    assert inception["TF1 input tensor"] == "Mul:0" and inception["input size"] == "299×299×3"
    assert "--input_mean=128 --input_std=128" in inception["TF1 label_image flags"]


def test_pca_2d_separates_clusters():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (20, 16))
    b = rng.normal(0, 0.1, (20, 16)) + 3
    points, ratio = explain.pca_2d(np.vstack([a, b]))
    assert points.shape == (40, 2) and ratio[0] > 0.9
    assert np.sign(points[:20, 0]).std() == 0 and np.sign(points[:20, 0][0]) != np.sign(points[20:, 0][0])


def test_projection_is_none_without_cached_features(tmp_path):
    from engine.data.sources import make_demo_dataset

    folder = make_demo_dataset(tmp_path / "demo", num_classes=2, per_class=4, size=32)
    assert projection.cached_projection(folder, "mobilenet_0.25_224", "random") is None


def test_cli_json_last_line(capsys):
    from engine.cli.main import main

    assert main(["arch", "mobilenet_0.25_224", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    assert data["params"] == architecture.analyze("mobilenet_0.25_224").params
    assert data["macs"] == pytest.approx(41e6, rel=0.05)
    assert any(line.strip().startswith("block_13") for line in out)


def test_cli_unknown_name_exit_2_lists_names():
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "arch", "resnet50"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "inception_v3" in proc.stderr and "mobilenet_0.25_224" in proc.stderr


def test_unknown_name_raises_not_found():
    with pytest.raises(NotFound, match="choose one of"):
        architecture.analyze("resnet50")


def test_projection_of_really_cached_features(tmp_path):
    from engine.data import datasets
    from engine.data.sources import make_demo_dataset
    from engine.features.extract import extract_features

    folder = make_demo_dataset(tmp_path / "demo", num_classes=2, per_class=4, size=32)
    records = datasets.scan_image_dir(folder).records
    extract_features(records, "mobilenet_0.25_128", "random", seed=0)
    found = projection.cached_projection(folder, "mobilenet_0.25_128", "random", seed=0)
    assert found is not None
    assert found.cached == found.total == len(records) == 8
    assert found.points.shape == (8, 2) and sorted(set(found.labels)) == sorted({r.label for r in records})
    assert 0 < found.explained[0] <= 1


def test_block_names_come_from_layer_names_and_the_graph_alone():
    records = [
        {"name": "input", "inbound": []},
        {"name": "conv1", "inbound": ["input"]},
        {"name": "conv_dw_1", "inbound": ["conv1"]},
        {"name": "re_lu", "inbound": ["conv_dw_1"]},  # auto-named: follows its input
        {"name": "conv_pw_1", "inbound": ["re_lu"]},
        {"name": "conv_dw_2", "inbound": ["conv_pw_1"]},
        {"name": "pool", "inbound": ["conv_dw_2"]},
    ]
    assert block_names.assign_blocks("mobilenet_v1", records) == {
        "input": "stem",
        "conv1": "stem",
        "conv_dw_1": "block_1",
        "re_lu": "block_1",
        "conv_pw_1": "block_1",
        "conv_dw_2": "block_2",
        "pool": "head",
    }
    # no Keras and no other module of the lab: both architecture and blocks can build on it
    code = (
        "import sys, engine.models.block_names; "
        "print(*sorted(m for m in sys.modules if 'engine.' in m or 'keras' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["engine.models", "engine.models.block_names"]


@pytest.mark.parametrize(
    "damage",
    [b"", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000, b'{"schema": 0}', b"wrong-shape", b"\xff"],
    ids=["empty", "list", "deep", "old-schema", "wrong-shape", "not-utf8"],
)
def test_a_damaged_architecture_cache_is_rebuilt(damage):
    name = "mobilenet_0.25_128"
    architecture.clear_memory(name)  # each test has its own LAB_HOME: write this one's cache file
    expected = architecture.analyze(name)
    path = architecture._cache_path(name)
    data = json.loads(path.read_text())
    if damage == b"wrong-shape":
        damage = json.dumps({**data, "records": [{"name": 1}]}).encode()
    path.write_bytes(damage)
    architecture.clear_memory(name)
    assert architecture.analyze(name).macs == expected.macs
    assert json.loads(path.read_text())["schema"] == data["schema"]  # written anew
