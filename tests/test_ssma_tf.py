"""AdapNet++ / SSMA TensorFlow checkpoints → our models (``rgbd-seg convert``; TensorFlow is the optional [tf] extra).

The variable names and shapes are transcribed here from the authors' graphs (DeepSceneSeg/AdapNet-pp
``models/AdapNet_pp.py`` + ``models/network_base.py``, DeepSceneSeg/SSMA ``models/SSMA.py`` +
``models/ssma_helper.py``), written with TensorFlow's own ``SaveV2`` op (plus the Adam slots and step counter that
training leaves), converted, and checked three ways: the load report (every variable used or listed as
training-only), single tensors (split 3×3 convs, transposed convs), and the whole forward pass against the authors'
graph re-implemented here with ``tf.nn`` ops on the same variables ("SAME" padding, ``atrous_conv2d``,
``conv2d_transpose``, ``batch_normalization``), which proves every tensor landed where it belongs.
"""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
import torch
import torch._dynamo  # must precede TensorFlow: imported after it, it crashes the process

from rgbd_seg_ros.models.checkpoints import load_checkpoint
from rgbd_seg_ros.models.convert import convert

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FILTERS, UNITS = (256, 512, 1024, 2048), (3, 4, 6, 3)
EASPP = (("conv70", "conv7", "conv247", "conv71"), ("conv80", "conv8", "conv248", "conv81"),
         ("conv90", "conv9", "conv249", "conv91"))  # fmt: skip


def expert_variables(scope: str) -> dict[str, tuple[int, ...]]:
    """The encoder ("expert") variables of ``AdapNet_pp._setup`` / ``ssma_helper.expert._setup`` under ``scope``."""
    v: dict[str, tuple[int, ...]] = {}

    def bn(s, c):
        v.update({f"{scope}{s}/BatchNorm/{n}": (c,) for n in ("gamma", "beta", "moving_mean", "moving_variance")})

    def w(s, shape, with_bn=True):
        v[f"{scope}{s}/weights"] = shape
        if with_bn:
            bn(s, shape[-1])

    bn("conv0", 3)
    w("conv1", (7, 7, 3, 64))
    cin = 64
    for b, (out, n) in enumerate(zip(FILTERS, UNITS), start=1):
        mid = out // 4
        for u in range(1, n + 1):
            p = f"block{b}/unit_{u}/bottleneck_v1"
            w(f"{p}/conv1", (1, 1, cin if u == 1 else out, mid))
            w(f"{p}/conv2", (3, 3, mid, mid))
            w(f"{p}/conv3", (1, 1, mid, out), with_bn=False)
            bn(f"{p}/conv3", out)  # opened by the next unit (or the stage end) on this unit's output
            if u == 1:  # unit_0 projects its conv1 output (64 ch); the other first units their input
                w(f"{p}/shortcut", (1, 1, mid if b == 1 else cin, out), with_bn=False)
        cin = out
    w("conv32", (1, 1, 256, 24))
    w("conv174", (1, 1, 512, 24))
    w("conv256", (1, 1, 2048, 256))
    for names in EASPP:
        for s, shape in zip(names, ((1, 1, 2048, 64), (3, 3, 64, 64), (3, 3, 64, 64), (1, 1, 64, 256))):
            w(s, shape)
    w("conv57", (1, 1, 2048, 256))
    w("conv10", (1, 1, 1280, 256))
    return v


def decoder_variables(scope: str, k: int, aux: bool, attention: bool) -> dict[str, tuple[int, ...]]:
    """The decoder variables (``conv41`` … ``conv5``, aux ``conv911``/``conv912``, SSMA's ``conv550``/``conv551``)."""
    v: dict[str, tuple[int, ...]] = {}
    skip = 24
    layers = [("conv41", (4, 4, 256, 256)), ("conv89", (3, 3, 256 + skip, 256)), ("conv96", (3, 3, 256, 256)),
              ("conv16", (4, 4, 256, 256)), ("conv88", (3, 3, 256 + skip, 256)), ("conv95", (3, 3, 256, 256)),
              ("conv78", (1, 1, 256, k)), ("conv5", (8, 8, k, k))]  # fmt: skip
    if aux:
        layers += [("conv911", (1, 1, 256, k)), ("conv912", (1, 1, 256, k))]
    if attention:
        layers += [("conv550", (1, 1, 256, skip)), ("conv551", (1, 1, 256, skip))]
    for s, shape in layers:
        v[f"{scope}{s}/weights"] = shape
        channels = shape[2] if s in ("conv41", "conv16", "conv5") else shape[3]  # tconv kernels are [k, k, out, in]
        v.update(
            {f"{scope}{s}/BatchNorm/{n}": (channels,) for n in ("gamma", "beta", "moving_mean", "moving_variance")}
        )
    return v


def ssma_fusion_variables() -> dict[str, tuple[int, ...]]:
    v = {}
    for s, shape in (("conv511", (3, 3, 512, 32)), ("conv512", (3, 3, 32, 512)), ("conv513", (3, 3, 48, 8)),
                     ("conv514", (3, 3, 8, 48)), ("conv518", (3, 3, 48, 8)), ("conv519", (3, 3, 8, 48)),
                     ("conv552", (3, 3, 48, 24)), ("conv553", (3, 3, 48, 24))):  # fmt: skip
        v[f"{s}/weights"], v[f"{s}/biases"] = shape, (shape[-1],)
    v["conv515/weights"] = (1, 1, 512, 256)
    v.update({f"conv515/BatchNorm/{n}": (256,) for n in ("gamma", "beta", "moving_mean", "moving_variance")})
    return v


def random_values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        leaf = name.rsplit("/", 1)[1]
        if leaf == "weights":
            fan_in = (
                shape[0] * shape[1] * (shape[3] if name.split("/")[-2] in ("conv41", "conv16", "conv5") else shape[2])
            )
            value = rng.standard_normal(shape) * (1.0 / fan_in) ** 0.5
        elif leaf == "gamma":
            value = rng.uniform(0.6, 1.4, shape)
        elif leaf == "moving_variance":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.standard_normal(shape) * 0.1
        out[name] = value.astype(np.float32)
    for name in out:  # the input BN sees raw 0–255 pixels: realistic statistics keep the forward well scaled
        if name.endswith("conv0/BatchNorm/moving_mean"):
            out[name] = np.array([100.0, 110.0, 120.0], np.float32)
        elif name.endswith("conv0/BatchNorm/moving_variance"):
            out[name] = np.array([3000.0, 3200.0, 3400.0], np.float32)
    return out


def save_tf(prefix, values: dict[str, np.ndarray]) -> None:
    """Write a TF checkpoint with exactly these variable names (TensorFlow's own writer, V2 format)."""
    tf = pytest.importorskip("tensorflow")
    names = sorted(values)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(values[n]) for n in names],
    )


def training_leftovers(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a training checkpoint also holds: Adam slots of some variables, Adam's beta powers, the step counter."""
    extra = {"global_step": np.array(30000, np.int64), "beta1_power": np.array(0.9, np.float32),
             "beta2_power": np.array(0.999, np.float32)}  # fmt: skip
    for name in sorted(values)[:5]:
        extra[f"{name}/Adam"] = np.zeros_like(values[name])
        extra[f"{name}/Adam_1"] = np.zeros_like(values[name])
    return extra


class AuthorsGraph:
    """The authors' forward (``network_base`` + ``AdapNet_pp._setup`` + ``SSMA._setup``) with ``tf.nn`` ops, NHWC."""

    def __init__(self, values: dict[str, np.ndarray]):
        import tensorflow as tf

        self.tf, self.v = tf, values

    def bn(self, x, s):
        v = self.v
        p = f"{s}/BatchNorm/"
        return self.tf.nn.batch_normalization(
            x, v[p + "moving_mean"], v[p + "moving_variance"], v[p + "beta"], v[p + "gamma"], 1e-5
        )

    def conv(self, x, s, stride=1):
        return self.tf.nn.conv2d(x, self.v[f"{s}/weights"], [1, stride, stride, 1], "SAME")

    def cbr(self, x, s, stride=1, relu=True):
        y = self.bn(self.conv(x, s, stride), s)
        return self.tf.nn.relu(y) if relu else y

    def acbr(self, x, s, rate):
        return self.tf.nn.relu(self.bn(self.tf.nn.atrous_conv2d(x, self.v[f"{s}/weights"], rate, "SAME"), s))

    def split_cbr(self, x, s, both_atrous):
        tf = self.tf
        a, b = tf.split(self.v[f"{s}/weights"], 2, 3)
        out_a = tf.nn.atrous_conv2d(x, a, 2, "SAME") if both_atrous else tf.nn.conv2d(x, a, [1, 1, 1, 1], "SAME")
        return tf.nn.relu(self.bn(tf.concat([out_a, tf.nn.atrous_conv2d(x, b, 2, "SAME")], 3), s))

    def pre(self, x, s):
        return self.tf.nn.relu(self.bn(x, s))

    def tconv_bn(self, x, s, stride):
        w = self.v[f"{s}/weights"]
        shape = [x.shape[0], x.shape[1] * stride, x.shape[2] * stride, w.shape[2]]
        return self.bn(self.tf.nn.conv2d_transpose(x, w, shape, [1, stride, stride, 1], "SAME"), s)

    def expert(self, x, sc):
        """(eAspp_out, skip1 = conv32 at 1/4, skip2 = conv174 at 1/8)."""
        tf = self.tf
        x = self.bn(x, f"{sc}conv0")
        x = tf.nn.max_pool2d(self.cbr(x, f"{sc}conv1", 2), 3, 2, "SAME")
        blk = f"{sc}block%d/unit_%d/bottleneck_v1"
        # block1: unit_0 (shortcut from conv1's output), unit_1 ×2
        p = blk % (1, 1)
        y = self.cbr(x, f"{p}/conv1")
        x = self.conv(self.cbr(y, f"{p}/conv2"), f"{p}/conv3") + self.conv(y, f"{p}/shortcut")
        for u in (2, 3):
            x = self.unit(x, sc, 1, u, 1)
        b1 = self.pre(x, (blk % (1, 3)) + "/conv3")
        # block2: unit_1 (shortcut, stride 2), unit_1 ×2, unit_3
        x = self.unit(b1, sc, 2, 1, 2, shortcut=True)
        for u in (2, 3):
            x = self.unit(x, sc, 2, u, 1)
        x = self.unit(x, sc, 2, 4, 1, split=False)
        b2 = self.pre(x, (blk % (2, 4)) + "/conv3")
        # block3: unit_1 (shortcut, stride 2), unit_1, unit_3 ×4
        x = self.unit(b2, sc, 3, 1, 2, shortcut=True)
        x = self.unit(x, sc, 3, 2, 1)
        for u in (3, 4, 5, 6):
            x = self.unit(x, sc, 3, u, 1, split=False)
        # block4: unit_4 ×3 (the first with a shortcut, its input BN in block3/unit_6)
        x = self.unit(x, sc, 4, 1, 1, shortcut=True, split=True, pre_scope=(blk % (3, 6)) + "/conv3")
        for u in (2, 3):
            x = self.unit(x, sc, 4, u, 1, split=True)
        b4 = self.pre(x, (blk % (4, 3)) + "/conv3")
        skip1, skip2 = self.cbr(b1, f"{sc}conv32", relu=False), self.cbr(b2, f"{sc}conv174", relu=False)
        branches = [self.cbr(b4, f"{sc}conv256")]
        for names, rate in zip(EASPP, (3, 6, 12)):
            y = self.cbr(b4, f"{sc}{names[0]}")
            y = self.acbr(self.acbr(y, f"{sc}{names[1]}", rate), f"{sc}{names[2]}", rate)
            branches.append(self.cbr(y, f"{sc}{names[3]}"))
        pooled = self.cbr(tf.reduce_mean(b4, [1, 2], keepdims=True), f"{sc}conv57")
        branches.append(tf.image.resize(pooled, b4.shape[1:3]))
        return self.cbr(tf.concat(branches, 3), f"{sc}conv10", relu=False), skip1, skip2

    def unit(self, x, sc, block, u, stride, shortcut=False, split=None, pre_scope=None):
        """``unit_1`` (split None), ``unit_3`` (split False: plain + atrous halves), ``unit_4`` (split True)."""
        p = f"{sc}block{block}/unit_{u}/bottleneck_v1"
        if shortcut and pre_scope is None:
            act = x
        else:
            act = self.pre(x, pre_scope or f"{sc}block{block}/unit_{u - 1}/bottleneck_v1/conv3")
        y = self.cbr(act, f"{p}/conv1")
        y = self.cbr(y, f"{p}/conv2", stride) if split is None else self.split_cbr(y, f"{p}/conv2", split)
        y = self.conv(y, f"{p}/conv3")
        return y + (self.conv(act, f"{p}/shortcut", stride) if shortcut else x)

    def decoder(self, latent, skip8, skip4, sc="", attention=False):
        tf = self.tf
        d1 = self.tconv_bn(latent, f"{sc}conv41", 2)
        if attention:
            skip8 = self.cbr(tf.reduce_mean(d1, [1, 2], keepdims=True), f"{sc}conv550") * skip8
        y = self.cbr(self.cbr(tf.concat([d1, skip8], 3), f"{sc}conv89"), f"{sc}conv96")
        d2 = self.tconv_bn(y, f"{sc}conv16", 2)
        if attention:
            skip4 = self.cbr(tf.reduce_mean(d2, [1, 2], keepdims=True), f"{sc}conv551") * skip4
        y = self.cbr(self.cbr(tf.concat([d2, skip4], 3), f"{sc}conv88"), f"{sc}conv95")
        return self.tconv_bn(self.cbr(y, f"{sc}conv78"), f"{sc}conv5", 4)

    def adapnet(self, x):
        latent, skip1, skip2 = self.expert(x, "resnet_v2_50/")
        return self.decoder(latent, skip2, skip1, "resnet_v2_50/")

    def ssma(self, x1, x2):
        tf = self.tf
        e1, e2 = self.expert(x1, "rgb/resnet_v2_50/"), self.expert(x2, "depth/resnet_v2_50/")

        def conv_bias(x, s):
            return self.conv(x, s) + self.v[f"{s}/biases"]

        def gate(x, reduce, expand):
            return x * tf.sigmoid(conv_bias(tf.nn.relu(conv_bias(x, reduce)), expand))

        in3 = self.cbr(gate(tf.concat([e1[0], e2[0]], 3), "conv511", "conv512"), "conv515", relu=False)
        skip1_out = conv_bias(gate(tf.concat([e1[2], e2[2]], 3), "conv513", "conv514"), "conv552")  # 1/8
        skip2_out = conv_bias(gate(tf.concat([e1[1], e2[1]], 3), "conv518", "conv519"), "conv553")  # 1/4
        return self.decoder(in3, skip1_out, skip2_out, attention=True)


def _bgr_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, (1, 64, 96, 3)).astype(np.float32) for _ in range(n)]


def _ours(model, *images: np.ndarray | None) -> np.ndarray:
    """Our model on NHWC images (None passes through: AdapNet++'s unused second input)."""
    with torch.no_grad():
        out = model(*(None if i is None else torch.from_numpy(i).permute(0, 3, 1, 2).contiguous() for i in images))
    return out.permute(0, 2, 3, 1).numpy()


def test_adapnet_tf_checkpoint_converts_and_matches_the_authors_graph(tmp_path):
    pytest.importorskip("tensorflow")
    k = 12
    variables = {**expert_variables("resnet_v2_50/"), **decoder_variables("resnet_v2_50/", k, True, False)}
    values = random_values(variables, 1)
    prefix = tmp_path / "adapnet_cityscapes_rgb" / "model.ckpt-30000"
    prefix.parent.mkdir()
    save_tf(prefix, {**values, **training_leftovers(values)})

    result = convert(prefix.with_name("model.ckpt-30000.index"), tmp_path / "a.safetensors",
                     release="adapnet-cityscapes-rgb")  # fmt: skip
    report = result.report
    assert report.source_tensors == len(variables) + 13 and report.tensors == 396
    assert {n for n in report.ignored if "Adam" not in n} == {"global_step", "beta1_power", "beta2_power"}
    assert sum("Adam" in n for n in report.ignored) == 10
    assert result.metadata["source"]["format"] == "tensorflow"
    assert [f["name"] for f in result.metadata["source"]["files"]][-1] == "model.ckpt-30000.index"

    model, meta = load_checkpoint(result.path)
    assert meta["label_set"] == "deepscene-12" and meta["input_size"] == [384, 768]
    assert model.config["options"]["tf_padding"] is True and model.input_spec.rgb_order == "bgr"
    enc = model.encoder
    # a split 3×3 conv: one [3, 3, in, out] kernel → conv_a (first half of out) and conv_b (second half)
    kernel = values["resnet_v2_50/block3/unit_4/bottleneck_v1/conv2/weights"]
    np.testing.assert_array_equal(
        enc.layer3.units[3].conv2.conv_a.weight.detach().numpy(), kernel[..., :128].transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(
        enc.layer3.units[3].conv2.conv_b.weight.detach().numpy(), kernel[..., 128:].transpose(3, 2, 0, 1)
    )
    # a transposed conv: [k, k, out, in] → [in, out, k, k]; the pre-activation BN of unit 2 sits in unit 1's scope
    tconv = values["resnet_v2_50/conv5/weights"]
    np.testing.assert_array_equal(model.decoder.up3[0].weight.detach().numpy(), tconv.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(
        enc.layer2.units[1].bn0.running_var.numpy(),
        values["resnet_v2_50/block2/unit_1/bottleneck_v1/conv3/BatchNorm/moving_variance"],
    )

    (image,) = _bgr_images(1, 2)
    theirs = AuthorsGraph(values).adapnet(image).numpy()
    ours = _ours(model, image, None)
    assert 0.1 < np.abs(theirs).max() < 1e4
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_ssma_tf_checkpoint_converts_and_matches_the_authors_graph(tmp_path):
    pytest.importorskip("tensorflow")
    k = 38
    variables = {**expert_variables("rgb/resnet_v2_50/"), **expert_variables("depth/resnet_v2_50/"),
                 **ssma_fusion_variables(), **decoder_variables("", k, False, True)}  # fmt: skip
    values = random_values(variables, 3)
    prefix = tmp_path / "sun_ssma_rgb_hha" / "model.ckpt"
    prefix.parent.mkdir()
    save_tf(prefix, values)
    (prefix.parent / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')

    with pytest.raises(ValueError, match="--release ssma-sunrgbd-rgb-jet; --release ssma-sunrgbd-rgb-hha"):
        convert(prefix.parent, tmp_path / "s.safetensors")  # the weights do not say jet or HHA
    result = convert(prefix.parent, tmp_path / "s.safetensors", modality="hha")
    assert result.report.release == "ssma-sunrgbd-rgb-hha" and result.report.ignored == {}
    assert result.report.tensors == 763
    model, meta = load_checkpoint(result.path)
    assert meta["label_set"] == "sunrgbd-38" and meta["class_names"][:2] == ["void", "wall"]
    assert meta["reported_miou"]["value"] == 44.3 and model.input_spec.depth_encoding == "hha"

    rgb, hha = _bgr_images(2, 4)
    theirs = AuthorsGraph(values).ssma(rgb, hha).numpy()
    ours = _ours(model, rgb, hha)
    assert 0.1 < np.abs(theirs).max() < 1e4
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_tf_checkpoint_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
    """Runs everywhere: with TensorFlow hidden, a TF checkpoint asks for the [tf] extra (it is never a dependency)."""
    (tmp_path / "model.ckpt-1.index").write_bytes(b"\0" * 16)
    (tmp_path / "model.ckpt-1.data-00000-of-00001").write_bytes(b"\0" * 16)
    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("No module named 'tensorflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(ValueError, match=r"pip install 'rgbd_seg_ros\[tf\]'"):
        convert(tmp_path / "model.ckpt-1", tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match=r"TensorFlow checkpoint.*rgbd-seg convert .*model\.ckpt-1 -o"):
        load_checkpoint(tmp_path / "model.ckpt-1.index")
