"""Training building blocks without a training run: recipes and overrides, LR schedule, batch order, loss
normalisation, class weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.models import build_model
from training.config import ConfigError, load_config, resolve_key
from training.data import StepSampler
from training.engine import LRSchedule, param_groups
from training.losses import SegmentationLoss, flatten_outputs, median_frequency_weights, resize_labels

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "training" / "configs").glob("*.yaml"))
SYNTHETIC = Path(__file__).resolve().parents[1] / "training" / "configs" / "synthetic_sgnet_r18.yaml"


# -- recipes -------------------------------------------------------------------------------------------------------
def test_there_is_a_recipe_per_paper_setting_and_synthetic_ones():
    names = {p.stem for p in CONFIGS}
    expected = {"sgnet_nyudv2", "sgnet_sunrgbd", "sagate_nyudv2", "acnet_nyudv2", "adapnet_rgb_cityscapes",
                "ssma_cityscapes_stage2", "ssma_cityscapes_stage3", "gff_cityscapes", "synthetic_sgnet_r18",
                "synthetic_rgb_r18", "synthetic_sagate_r18", "synthetic_acnet_r18"}  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds_its_model(path):
    from rgbd_seg_ros.labels import get_label_set

    cfg = load_config(path)

    with torch.device("meta"):
        model = build_model(cfg.model.name, get_label_set(cfg.model.label_set).num_classes, cfg.model.backbone,
                            **cfg.model.options)  # fmt: skip
    assert model.config["name"] == cfg.model.name
    assert cfg.train.max_iters or cfg.train.epochs


def test_overrides_bare_and_dotted_keys_with_types():
    cfg = load_config(SYNTHETIC, ["max_iters=7", "out_dir=/tmp/x", "optim.lr=1e-3", "augment.crop=[8, 16]",
                                  "model.options.sconv_stages=[1, 2]"])  # fmt: skip
    assert cfg.train.max_iters == 7 and cfg.train.out_dir == "/tmp/x"
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.augment.crop == [8, 16]
    assert cfg.model.options["sconv_stages"] == [1, 2]
    assert cfg.model.options["guidance"] == "depth"  # the rest of the dict survives


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=3", "ambiguous"),  # train.seed and data.synthetic.seed
        ("lrr=3", "no such setting"),
        ("max_iters=many", "integer"),
        ("optim.name=rmsprop", "not one of"),
        ("train.bogus=1", "unknown key"),
        ("max_iters", "not key=value"),
        ("max_iters=0", "train.max_iters must be >= 1, got 0"),
        ("max_iters=-3", "train.max_iters must be >= 1, got -3"),
        ("epochs=0", r"train.epochs must be > 0"),
        ("batch_size=-2", "train.batch_size must be >= 1"),
        ("augment.crop=[0,40]", r"augment.crop values must be >= 1"),
        ("augment.scale_range=[1.5,0.5]", "low <= high"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.betas=[0.9,1.0]", r"optim.betas values must be in \[0, 1\)"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\]"),
        ("data.synthetic.height=-4", "data.synthetic.height must be >= 1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("optim.groups=[{pattern: x, lr_mult: -1}]", r"optim.groups\[0\].lr_mult must be >= 0"),
        ("loss.class_weights=[1,-2]", "loss.class_weights values must be >= 0"),
        ("eval.sliding={crop: [0, 8], stride: [4, 4]}", "eval.sliding.crop"),
        ("eval.scales=[]", "at least one scale"),
        ("optim.lr=[1", "not YAML"),
    ],
)
def test_bad_overrides_are_rejected_with_a_reason(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SYNTHETIC, [override])


def test_range_bounds_are_inclusive_where_documented():
    cfg = load_config(SYNTHETIC, ["max_iters=1", "data.num_workers=0", "model.dropout=1", "optim.momentum=0"])
    assert (cfg.train.max_iters, cfg.data.num_workers, cfg.model.dropout, cfg.optim.momentum) == (1, 0, 1.0, 0.0)


def test_a_broken_recipe_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_iters: [1\n")
    with pytest.raises(ConfigError, match="not a readable YAML recipe"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no recipe at"):
        load_config(tmp_path / "missing.yaml")


def test_base_recipe_is_merged_and_hash_ignores_where_outputs_go(tmp_path):
    (tmp_path / "child.yaml").write_text(f"base: {SYNTHETIC}\noptim:\n  lr: 0.5\n")
    child, parent = load_config(tmp_path / "child.yaml"), load_config(SYNTHETIC)
    assert child.optim.lr == 0.5 and child.optim.momentum == parent.optim.momentum
    assert child.model == parent.model
    moved = load_config(SYNTHETIC, ["out_dir=/elsewhere", "checkpoint_every=3", "data.num_workers=0"])
    assert moved.hash() == parent.hash() != child.hash()
    assert resolve_key("checkpoint_every") == ("train", "checkpoint_every")


# -- schedule and optimiser ----------------------------------------------------------------------------------------
def test_lr_schedule_warmup_poly_and_step():
    poly = LRSchedule("poly", total=100, power=1.0, warmup=10)
    assert [poly.factor(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert poly.factor(50) == pytest.approx(0.5) and poly.factor(100) == 0.0
    tf_poly = LRSchedule("poly", total=100, power=1.0, end_ratio=0.1)  # TF polynomial_decay to lr/10
    assert tf_poly.factor(0) == pytest.approx(1.0) and tf_poly.factor(100) == pytest.approx(0.1)
    step = LRSchedule("step", total=100, step_size=30, gamma=0.8)
    assert [step.factor(t) for t in (0, 29, 30, 95)] == pytest.approx([1, 1, 0.8, 0.8**3])


def test_param_groups_no_decay_for_norms_and_biases_and_lr_multipliers():
    cfg = load_config(SYNTHETIC, ["optim.no_decay_norm_bias=true", "optim.weight_decay=0.01",
                                  'optim.groups=[{pattern: "^head[.]", lr_mult: 10}]'])  # fmt: skip
    model = torch.nn.ModuleDict({"body": torch.nn.Conv2d(3, 4, 3), "bn": torch.nn.BatchNorm2d(4),
                                 "head": torch.nn.Conv2d(4, 2, 1)})  # fmt: skip
    by_param = {id(p): g for g in param_groups(model, cfg) for p in g["params"]}
    get = dict(model.named_parameters()).__getitem__
    assert by_param[id(get("body.weight"))]["weight_decay"] == 0.01
    assert by_param[id(get("body.bias"))]["weight_decay"] == 0.0
    assert by_param[id(get("bn.weight"))]["weight_decay"] == 0.0
    assert by_param[id(get("head.weight"))]["lr"] == pytest.approx(10 * cfg.optim.lr)
    assert by_param[id(get("body.weight"))]["lr"] == pytest.approx(cfg.optim.lr)


# -- batch order ---------------------------------------------------------------------------------------------------
def _steps(sampler: StepSampler) -> list[list[tuple[int, int, int]]]:
    """Micro-batches grouped per optimiser step (accum micro-batches each)."""
    flat = list(sampler)
    return [[k for batch in flat[i : i + sampler.accum] for k in batch] for i in range(0, len(flat), sampler.accum)]


def test_global_batches_do_not_depend_on_ranks_or_accumulation():
    single = _steps(StepSampler(50, 8, world=1, rank=0, accum=1, seed=3, start_step=0, max_steps=12))
    split = [_steps(StepSampler(50, 8, world=2, rank=r, accum=2, seed=3, start_step=0, max_steps=12)) for r in (0, 1)]
    for step, batch in enumerate(single):
        merged = [k for r in (0, 1) for k in split[r][step]]
        assert sorted(merged) == sorted(batch)


def test_epochs_are_permutations_and_a_resumed_sampler_continues_the_sequence():
    full = list(StepSampler(20, 4, 1, 0, 1, seed=0, start_step=0, max_steps=15))
    per_epoch = 20 // 4
    for e in range(3):
        keys = [k for batch in full[e * per_epoch : (e + 1) * per_epoch] for k in batch]
        assert sorted(k[2] for k in keys) == list(range(20)) and {k[0] for k in keys} == {e}
    assert list(StepSampler(20, 4, 1, 0, 1, seed=0, start_step=7, max_steps=15)) == full[7:]
    assert full[:5] != list(StepSampler(20, 4, 1, 0, 1, seed=1, start_step=0, max_steps=5))
    with pytest.raises(ValueError, match="divisible"):
        StepSampler(20, 6, world=4, rank=0, accum=1, seed=0, start_step=0, max_steps=1)


# -- loss ----------------------------------------------------------------------------------------------------------
def _labels(shape, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.3] = 255
    return labels


def test_split_batches_with_the_global_normaliser_equal_the_whole_batch_mean():
    k = 5
    logits = torch.randn(4, k, 6, 8, generator=torch.Generator().manual_seed(1))
    labels = _labels((4, 6, 8), k)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    loss = SegmentationLoss(k, class_weights=weights)
    n = float(loss.weight_sum(labels))
    whole, _ = loss([("out", logits, 1.0)], labels, n)
    parts = sum(loss([("out", logits[i : i + 2], 1.0)], labels[i : i + 2], n)[0] for i in (0, 2))
    reference = F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
    assert whole.item() == pytest.approx(reference.item(), rel=1e-6)
    assert parts.item() == pytest.approx(reference.item(), rel=1e-6)


def test_low_resolution_aux_outputs_use_downsampled_labels_and_their_weight():
    k = 3
    labels = _labels((2, 8, 8), k, seed=2)
    aux = torch.randn(2, k, 4, 4)
    loss = SegmentationLoss(k)
    n = float(loss.weight_sum(labels))
    terms = flatten_outputs({"out": torch.zeros(2, k, 8, 8), "aux": [aux]}, (0.5,))
    total, parts = loss(terms, labels, n)
    small = resize_labels(labels, (4, 4))
    expected_aux = 0.5 * F.cross_entropy(aux, small, ignore_index=255, reduction="sum") / (n * 16 / 64)
    assert parts["out"] == pytest.approx(np.log(k), rel=1e-6)  # uniform logits
    assert parts["aux0"] == pytest.approx(expected_aux.item(), rel=1e-6)
    assert total.item() == pytest.approx(parts["out"] + parts["aux0"], rel=1e-6)
    assert torch.equal(small, labels[:, 1::2, 1::2])  # pixel-centre nearest = every second pixel


def test_focal_loss_is_below_cross_entropy_and_equal_at_gamma_zero():
    k = 4
    logits, labels = torch.randn(2, k, 5, 5), _labels((2, 5, 5), k, seed=3)
    ce = SegmentationLoss(k)
    n = float(ce.weight_sum(labels))
    term = [("out", logits, 1.0)]
    plain = ce(term, labels, n)[0].item()
    assert SegmentationLoss(k, focal_gamma=0.0)(term, labels, n)[0].item() == pytest.approx(plain)
    assert SegmentationLoss(k, focal_gamma=2.0)(term, labels, n)[0].item() < plain


def test_aux_outputs_must_match_aux_weights():
    with pytest.raises(ValueError, match="aux weights"):
        flatten_outputs({"out": torch.zeros(1), "aux": [torch.zeros(1), torch.zeros(1)]}, (0.4,))
    with pytest.raises(ValueError, match="outside"):
        SegmentationLoss(3).pixel_sum(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 7))


def test_median_frequency_weights_by_hand():
    # image A: 3 px class 0, 1 px class 1; image B: 2 px class 1, 2 px ignore.
    a = np.array([[0, 0], [0, 1]], np.uint8)
    b = np.array([[1, 1], [255, 255]], np.uint8)
    w = median_frequency_weights([a, b], num_classes=3)
    f0, f1 = 3 / 4, 3 / 8  # pixels of the class / pixels of the images containing it
    median = np.median([f0, f1])
    assert w == pytest.approx([median / f0, median / f1, 0.0])


def test_class_weights_file_is_trusted_only_when_it_fits(tmp_path):
    from training.engine import read_class_weights

    path = tmp_path / "class_weights.json"
    assert read_class_weights(path, 3) is None  # absent
    path.write_text("[0.5, 1, 2.0]")
    assert read_class_weights(path, 3) == [0.5, 1.0, 2.0]
    said = []
    for text in ("[0.5, 1, 2.", "[0.5, 1]", "[0.5, -1, 2]", '{"a": 1}', "[0.5, NaN, 1]"):
        path.write_text(text)
        assert read_class_weights(path, 3, said.append) is None, text
    assert len(said) == 5 and all("recomputing" in s for s in said)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_and_checkpoints_get_ordinary_permissions(tmp_path, umask):
    """0666 minus the umask, like any new file (safetensors alone makes them 0600)."""
    from training.engine import atomic_torch_save, build_training_model, write_weights

    model = build_training_model(load_config(SYNTHETIC, ["model.options.width=8", "model.options.head_channels=8"]), 40)
    old = os.umask(umask)
    try:
        weights = write_weights(model, tmp_path / "model.safetensors", {"label_set": "synthetic"})
        atomic_torch_save({"step": 1}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    for path in (weights, tmp_path / "last.pt"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model.safetensors"]  # no temporaries left


def test_init_from_loads_matching_tensors_and_dropout_override(tmp_path):
    from rgbd_seg_ros.models.checkpoints import save_checkpoint
    from training.engine import build_training_model

    small = ["model.options.width=8", "model.options.head_channels=8", "model.options.proj_channels=8"]
    torch.manual_seed(0)
    donor = build_training_model(load_config(SYNTHETIC, small), 40)
    path = save_checkpoint(donor, tmp_path / "donor.safetensors")
    torch.manual_seed(1)
    fresh = build_training_model(load_config(SYNTHETIC, small), 40)
    torch.manual_seed(1)
    warm = build_training_model(load_config(SYNTHETIC, [*small, f"model.init_from={path}", "model.dropout=0.3"]), 40)
    donor_state, fresh_state, warm_state = donor.state_dict(), fresh.state_dict(), warm.state_dict()
    assert all(torch.equal(warm_state[k], donor_state[k]) for k in donor_state)
    assert not torch.equal(fresh_state["conv1.weight"], donor_state["conv1.weight"])
    drops = [m.p for m in warm.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert drops and all(p == 0.3 for p in drops)


def test_synthetic_data_is_generated_once_when_no_root_is_given(tmp_path):
    from training.data import dataset_root, open_split

    cfg = load_config(
        SYNTHETIC, [f"out_dir={tmp_path}", "data.synthetic={n_train: 3, n_test: 2, height: 24, width: 32}"]
    )
    root = dataset_root(cfg)
    assert root.parent == tmp_path / "data" and (root / "intrinsics.yaml").is_file()
    stamp = (root / "RGB" / "0.png").stat().st_mtime_ns
    assert dataset_root(cfg) == root and (root / "RGB" / "0.png").stat().st_mtime_ns == stamp  # reused
    train, test = open_split(cfg, "train"), open_split(cfg, "test")
    assert (len(train), len(test)) == (3, 2) and train[0].frame.rgb.shape == (24, 32, 3)


def test_float16_weights_load_into_a_float32_model(tmp_path):
    from rgbd_seg_ros.models.checkpoints import load_checkpoint
    from training.engine import build_training_model, write_weights

    cfg = load_config(SYNTHETIC, ["model.options.width=8", "model.options.head_channels=8"])
    model = build_training_model(cfg, 40).eval()
    path = write_weights(model, tmp_path / "model.safetensors", {"label_set": "synthetic"}, "float16")
    loaded, meta = load_checkpoint(path)
    assert meta["weights_dtype"] == "float16" and path.stat().st_size < 0.6 * 4 * sum(
        p.numel() for p in model.parameters()
    )
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert q.dtype == p.dtype
        expected = p.half().to(p.dtype) if p.is_floating_point() else p
        assert torch.equal(q, expected), name
    assert next(model.parameters()).dtype == torch.float32  # the trained model itself is untouched
