"""GFF as released (DecoupleSegNets "GFFNet": WideResNet-38-A2 + ASPP + GFF/DFP head).

The authors' key list is derived here from their architecture (``network/wider_resnet.py``: ``WiderResNetA2`` with
``dilation=True``; ``network/gffnets.py``: ``DeepWV3PlusGFFNet``, ``WiderResNetGFFDFPHead``; ``network/deepv3.py``
ASPP at output stride 8), random weights are written in their snapshot layout, and our converted model is compared
stage by stage with a functional re-implementation of their ``forward`` written in this file.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.models import build_model, input_spec_for
from rgbd_seg_ros.models.checkpoints import load_official
from rgbd_seg_ros.models.coarse import coarse_logits
from rgbd_seg_ros.models.gff import GFFWideResNet, ImagePoolASPP

K = 19
#: (module, blocks, channels, first stride, dilation): WiderResNetA2(structure=[3, 3, 6, 3, 1, 1], dilation=True).
MODS = (
    ("mod2", 3, (128, 128), 1, 1),
    ("mod3", 3, (256, 256), 1, 1),
    ("mod4", 6, (512, 512), 2, 1),
    ("mod5", 3, (512, 1024), 1, 2),
    ("mod6", 1, (512, 1024, 2048), 1, 4),
    ("mod7", 1, (1024, 2048, 4096), 1, 4),
)


def authors_keys(num_classes: int = K) -> dict[str, tuple[int, ...]]:
    """Key → shape of ``DeepWV3PlusGFFNet`` (plain BatchNorm2d, so ``num_batches_tracked`` is included)."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(p, c):
        keys.update({f"{p}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{p}.num_batches_tracked"] = ()

    def conv(p, cout, cin, k, bias=False):
        keys[f"{p}.weight"] = (cout, cin, k, k)
        if bias:
            keys[f"{p}.bias"] = (cout,)

    conv("mod1.conv1", 64, 3, 3)
    cin = 64
    for mod, blocks, ch, stride, _ in MODS:
        for b in range(1, blocks + 1):
            p = f"{mod}.block{b}"
            bn(f"{p}.bn1.0", cin)
            if len(ch) == 2:
                conv(f"{p}.convs.conv1", ch[0], cin, 3)
                bn(f"{p}.convs.bn2.0", ch[0])
                conv(f"{p}.convs.conv2", ch[1], ch[0], 3)
            else:
                conv(f"{p}.convs.conv1", ch[0], cin, 1)
                bn(f"{p}.convs.bn2.0", ch[0])
                conv(f"{p}.convs.conv2", ch[1], ch[0], 3)
                bn(f"{p}.convs.bn3.0", ch[1])
                conv(f"{p}.convs.conv3", ch[2], ch[1], 1)
            if b == 1 and (stride != 1 or cin != ch[-1]):
                conv(f"{p}.proj_conv", ch[-1], cin, 1)
            cin = ch[-1]
    conv("aspp.img_conv.0", 256, 4096, 1)
    bn("aspp.img_conv.1", 256)
    for i, k in enumerate((1, 3, 3, 3)):
        conv(f"aspp.features.{i}.0", 256, 4096, k)
        bn(f"aspp.features.{i}.1", 256)
    conv("bot_aspp", 256, 1280, 3)
    for i, c in enumerate((128, 1024, 256), start=1):
        conv(f"gff_head.d_in{i}.0", 128, c, 1)
        bn(f"gff_head.d_in{i}.1", 128)
        conv(f"gff_head.gate{i}.0", 128, c, 1, bias=True)
    for name, c in (("dense_3", 128), ("dense_6", 256), ("dense_9", 384)):
        bn(f"gff_head.{name}.norm1", c)
        conv(f"gff_head.{name}.conv1", 128, c, 1, bias=True)
        bn(f"gff_head.{name}.norm2", 128)
        conv(f"gff_head.{name}.conv2", 128, 128, 3, bias=True)
    conv("gff_head.cls.0", 256, 512, 3)
    bn("gff_head.cls.1", 256)
    conv("gff_head.cls.3", 256, 256, 3)
    bn("gff_head.cls.4", 256)
    conv("gff_head.cls.6", num_classes, 256, 1)
    return keys


@functools.lru_cache(maxsize=1)
def authors_state() -> dict[str, torch.Tensor]:
    """Random weights under the authors' keys (cached; callers must not modify them)."""
    gen = torch.Generator().manual_seed(11)
    state = {}
    for key, shape in authors_keys().items():
        name = key.rsplit(".", 1)[1]
        if name == "num_batches_tracked":
            value = torch.tensor(1000)
        elif len(shape) == 4:
            value = torch.randn(shape, generator=gen) * (1.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif name == "weight":
            value = torch.rand(shape, generator=gen) * 0.8 + 0.6
        elif name == "running_var":
            value = torch.rand(shape, generator=gen) + 0.5
        else:
            value = torch.randn(shape, generator=gen) * 0.1
        state[key] = value
    return state


class AuthorsReference:
    """``DeepWV3PlusGFFNet.forward`` in functional form over the raw keys (eval-mode BN, no dropout)."""

    def __init__(self, s: dict[str, torch.Tensor]):
        self.s = s

    def bn(self, x, p, relu=True):
        s = self.s
        y = F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"], eps=1e-5)
        return F.relu(y) if relu else y

    def conv(self, x, p, stride=1, dilation=1):
        w = self.s[f"{p}.weight"]
        pad = dilation * (w.shape[-1] // 2)
        return F.conv2d(x, w, self.s.get(f"{p}.bias"), stride, pad, dilation)

    def block(self, x, p, stride, dil):
        act = self.bn(x, f"{p}.bn1.0")
        if f"{p}.convs.conv3.weight" in self.s:  # bottleneck: the stride sits on the 1×1
            y = self.bn(self.conv(act, f"{p}.convs.conv1", stride), f"{p}.convs.bn2.0")
            y = self.bn(self.conv(y, f"{p}.convs.conv2", 1, dil), f"{p}.convs.bn3.0")
            y = self.conv(y, f"{p}.convs.conv3")
        else:
            y = self.bn(self.conv(act, f"{p}.convs.conv1", stride, dil), f"{p}.convs.bn2.0")
            y = self.conv(y, f"{p}.convs.conv2", 1, dil)
        short = self.conv(act, f"{p}.proj_conv", stride) if f"{p}.proj_conv.weight" in self.s else x
        return y + short

    @staticmethod
    def up(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def __call__(self, img) -> list[torch.Tensor]:
        """[m2, m5, mod7, bot_aspp, head logits (1/2), output]."""
        x = self.conv(img, "mod1.conv1")
        outs = {}
        for mod, blocks, _, stride, dil in MODS:
            if mod in ("mod2", "mod3"):
                x = F.max_pool2d(x, 3, 2, 1)
            for b in range(1, blocks + 1):
                x = self.block(x, f"{mod}.block{b}", stride if b == 1 else 1, dil)
            outs[mod] = x
        x = outs["mod7"]
        img_f = self.up(
            self.bn(self.conv(F.adaptive_avg_pool2d(x, 1), "aspp.img_conv.0"), "aspp.img_conv.1"), x.shape[2:]
        )
        branches = [img_f] + [
            self.bn(self.conv(x, f"aspp.features.{i}.0", 1, r), f"aspp.features.{i}.1")
            for i, r in enumerate((1, 12, 24, 36))
        ]
        aspp = self.conv(torch.cat(branches, 1), "bot_aspp")
        m2, m5 = outs["mod2"], outs["mod5"]
        h = "gff_head"
        g_m2, g_m5, g_a = (torch.sigmoid(self.conv(t, f"{h}.gate{i}.0")) for i, t in enumerate((m2, m5, aspp), 1))
        m2 = self.bn(self.conv(m2, f"{h}.d_in1.0"), f"{h}.d_in1.1")
        m5 = self.bn(self.conv(m5, f"{h}.d_in2.0"), f"{h}.d_in2.1")
        a = self.bn(self.conv(aspp, f"{h}.d_in3.0"), f"{h}.d_in3.1")
        s2, s5, sa = m2.shape[2:], m5.shape[2:], a.shape[2:]
        m2 = m2 + g_m2 * m2 + (1 - g_m2) * (self.up(g_m5 * m5, s2) + self.up(g_a * a, s2))
        m5 = m5 + g_m5 * m5 + (1 - g_m5) * (self.up(g_m2 * m2, s5) + self.up(g_a * a, s5))
        a_f = a + a * g_a + (1 - g_a) * (self.up(g_m5 * m5, sa) + self.up(g_m2 * m2, sa))
        a_f, a, m5 = self.up(a_f, s2), self.up(a, s2), self.up(m5, s2)

        def dense(t, name, dil):
            t = self.conv(self.bn(t, f"{h}.{name}.norm1"), f"{h}.{name}.conv1")
            return self.conv(self.bn(t, f"{h}.{name}.norm2"), f"{h}.{name}.conv2", 1, dil)

        d3 = dense(a_f, "dense_3", 3)
        d6 = dense(torch.cat([d3, m5], 1), "dense_6", 6)
        d9 = dense(torch.cat([d3, d6, m2], 1), "dense_9", 9)
        y = torch.cat([d3, a, d6, d9], 1)
        y = self.bn(self.conv(y, f"{h}.cls.0"), f"{h}.cls.1")
        y = self.bn(self.conv(y, f"{h}.cls.3"), f"{h}.cls.4")
        logits = self.conv(y, f"{h}.cls.6")
        return [outs["mod2"], outs["mod5"], outs["mod7"], aspp, logits, self.up(logits, img.shape[2:])]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> tuple[GFFWideResNet, object]:
    """Our model loaded by ``load_official`` from a snapshot in the authors' layout."""
    state = authors_state()
    path = tmp_path_factory.mktemp("gff") / "GFFNet_best.pth"
    snapshot = {
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1, 2]}]},
        "epoch": 175,
        "mean_iu": np.float64(0.8123),  # a NumPy scalar, as the authors' snapshots hold
        "command": "python train.py --arch network.gffnets.DeepWV3PlusGFFNet",
    }
    torch.save(snapshot, path)
    model = build_model("gff", K, backbone="wider_resnet38")
    report = load_official(model, path)
    return model.eval(), report


def test_authors_key_list_and_parameter_count():
    """333 keys and 141.1 M parameters, as counted by instantiating the authors' model (official_code.md §5)."""
    keys = authors_keys()
    assert len(keys) == 333
    params = sum(int(np.prod(s)) for k, s in keys.items() if not k.endswith(("running_mean", "running_var", "ed")))
    assert params == pytest.approx(141.1e6, abs=0.05e6)
    model = build_model("gff", K, backbone="wider_resnet38")
    assert sum(p.numel() for p in model.parameters()) == params == 141_103_808
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys


def test_snapshot_loads_every_key(loaded):
    _, report = loaded
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == 333


def test_outputs_match_the_authors_forward_stage_by_stage(loaded):
    model, _ = loaded
    captured = []
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o: captured.append(o))
        for name in ("mod2", "mod5", "mod7", "bot_aspp", "gff_head")
    ]
    torch.manual_seed(5)
    rgb = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(rgb, None)
        reference = AuthorsReference(authors_state())(rgb)
    for h in hooks:
        h.remove()
    assert [tuple(t.shape[-2:]) for t in captured] == [(32, 48), (8, 12), (8, 12), (8, 12), (32, 48)]
    for stage, (ours, theirs) in enumerate(zip([*captured, out], reference)):
        scale = theirs.abs().max()
        assert scale > 1e-3, f"stage {stage} is degenerate"
        assert (ours - theirs).abs().max() <= 2e-5 * scale, f"stage {stage} differs"
    # The runtime's coarse logits are the authors' logits before their final upsampling.
    with torch.no_grad(), coarse_logits(model) as align_corners:
        coarse = model(rgb, None)
    assert align_corners is True
    assert (coarse - reference[-2]).abs().max() <= 2e-5 * reference[-2].abs().max()


def test_released_aspp_rates_and_order():
    """Image pooling first, then 1×1 and 3×3 at rates 12/24/36 (a map wide enough for every rate to matter)."""
    torch.manual_seed(0)
    aspp = ImagePoolASPP(4, 2).eval()
    for m in aspp.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 4, 80, 90)
    ref = AuthorsReference({f"aspp.{k}": v for k, v in aspp.state_dict().items()})
    with torch.no_grad():
        img = ref.bn(ref.conv(x.mean((2, 3), keepdim=True), "aspp.img_conv.0"), "aspp.img_conv.1").expand(
            -1, -1, 80, 90
        )
        want = [img] + [
            ref.bn(ref.conv(x, f"aspp.features.{i}.0", 1, r), f"aspp.features.{i}.1")
            for i, r in enumerate((1, 12, 24, 36))
        ]
        torch.testing.assert_close(aspp(x), torch.cat(want, 1))


def test_rgb_only_registry_entry_and_train_mode():
    model = build_model("gff", 3, backbone="wider_resnet38")
    assert input_spec_for("gff").depth_encoding == "none" and model.aux_weights == ()
    out = model(torch.randn(2, 3, 32, 40), None)
    assert out["out"].shape == (2, 3, 32, 40) and out["aux"] == []
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="no options"):
        build_model("gff", 3, backbone="wider_resnet38", head="psp")


def test_imagenet_trunk_loads_from_the_mapillary_layout(tmp_path):
    """``model.pretrained=``: the ImageNet WideResNet-38 (``module.`` keys, its classifier ignored), with a report."""
    from rgbd_seg_ros.models.backbones import pretrained_reports

    trunk = {k: v for k, v in authors_state().items() if k.startswith("mod")}
    extra = {"bn_out.0.weight": torch.ones(4096), "classifier.fc.weight": torch.zeros(1000, 4096)}
    path = tmp_path / "wider_resnet38.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in {**trunk, **extra}.items()}}, path)
    model = build_model("gff", K, backbone="wider_resnet38", pretrained=str(path))
    torch.testing.assert_close(model.mod4.block1.proj_conv.weight, trunk["mod4.block1.proj_conv.weight"])
    (report,) = pretrained_reports(model)
    assert report.ignored == sorted(extra) and report.loaded == sum(1 for k in trunk if "num_batches" not in k)
    assert "WideResNet-38" in str(report)
    del trunk["mod7.block1.convs.conv3.weight"]
    torch.save(trunk, path)
    with pytest.raises(ValueError, match="not an ImageNet WideResNet-38"):
        build_model("gff", K, backbone="wider_resnet38", pretrained=str(path))
