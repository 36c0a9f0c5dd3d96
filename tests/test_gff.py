"""GFF: the Eq. 5 update, gates, DFP connectivity, PPM pooling, parameter counts (Table 3), forward/backward,
the reusable decoder, and ONNX Runtime parity."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.models import build_model, input_spec_for
from rgbd_seg_ros.models.gff import (
    DenseFeaturePyramid,
    GatedFullyFusion,
    GFFDecoder,
    GFFHead,
    GFFNet,
    adaptive_avg_pool,
    gff_update,
)


def up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def levels(seed: int = 0) -> list[torch.Tensor]:
    """Three levels: 1/4 (8×8) and two at 1/8 (4×4), as in an output-stride-8 trunk."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, 3, 8, 8, generator=g),
        torch.randn(2, 3, 4, 4, generator=g),
        torch.randn(2, 3, 4, 4, generator=g),
    ]


def gates_of(values: list[float], feats: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.full((x.shape[0], 1, *x.shape[2:]), v) for v, x in zip(values, feats)]


# --- Eq. 5 ----------------------------------------------------------------------------------------------------


def test_one_open_gate_doubles_its_level_and_sends_it_everywhere():
    x = levels()
    out = gff_update(x, gates_of([0.0, 1.0, 0.0], x))
    torch.testing.assert_close(out[1], 2 * x[1])
    torch.testing.assert_close(out[0], x[0] + up(x[1], (8, 8)))
    torch.testing.assert_close(out[2], x[2] + x[1])


def test_closed_gates_are_identity_and_open_gates_only_amplify():
    x = levels(1)
    for got, want in zip(gff_update(x, gates_of([0, 0, 0], x)), x):
        torch.testing.assert_close(got, want)
    for got, want in zip(gff_update(x, gates_of([1, 1, 1], x)), x):
        torch.testing.assert_close(got, 2 * want)


def test_partial_gates_follow_equation_5():
    x = levels(2)
    g = [0.2, 0.5, 0.9]
    out = gff_update(x, gates_of(g, x))
    want2 = (1 + g[2]) * x[2] + (1 - g[2]) * (up(g[0] * x[0], (4, 4)) + g[1] * x[1])
    torch.testing.assert_close(out[2], want2)


def test_gate_is_per_pixel():
    x = levels(3)
    gates = gates_of([0, 0, 0], x)
    gates[1][:, :, 0, 0] = 1.0  # level 1 sends only from its top-left pixel
    out = gff_update(x, gates)
    torch.testing.assert_close(out[2][:, :, 0, 0], x[2][:, :, 0, 0] + x[1][:, :, 0, 0])
    torch.testing.assert_close(out[2][:, :, 1:, :], x[2][:, :, 1:, :])


def test_sequential_update_reads_updated_levels():
    x = levels(4)
    g = gates_of([0.3, 0.6, 0.4], x)
    simultaneous, sequential = gff_update(x, g), gff_update(x, g, "sequential")
    torch.testing.assert_close(sequential[0], simultaneous[0])
    torch.testing.assert_close(sequential[1], 1.6 * x[1] + 0.4 * (up(0.3 * simultaneous[0], (4, 4)) + 0.4 * x[2]))
    with pytest.raises(ValueError, match="≥ 2 levels"):
        gff_update(x[:1], g[:1])


def test_gates_come_from_raw_levels_with_one_or_c_channels():
    feats = [torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    pixel = GatedFullyFusion([16, 32], channels=8)
    assert [tuple(g.shape) for g in pixel.gates(feats)] == [(1, 1, 8, 8), (1, 1, 4, 4)]
    assert [c.in_channels for c in pixel.gate_convs] == [16, 32]
    assert [tuple(o.shape) for o in pixel(feats)] == [(1, 8, 8, 8), (1, 8, 4, 4)]
    channel = GatedFullyFusion([16, 32], channels=8, gate="channel")
    assert channel.gates(feats)[1].shape == (1, 8, 4, 4)


# --- DFP, PPM -------------------------------------------------------------------------------------------------


def test_dense_feature_pyramid_is_top_down_and_dense():
    torch.manual_seed(0)
    dfp = DenseFeaturePyramid(3, level_channels=4, context_channels=5, bottleneck=6, growth=2).eval()
    x, context = levels(5), torch.randn(2, 5, 4, 4)
    x = [torch.cat([t, t[:, :1]], 1) for t in x]  # 4 channels per level
    out = dfp(x, context)
    assert [tuple(o.shape) for o in out] == [(2, 2, 8, 8), (2, 2, 4, 4), (2, 2, 4, 4)]
    bumped = [x[0] + 1.0, x[1], x[2]]
    again = dfp(bumped, context)
    torch.testing.assert_close(again[2], out[2])  # the top level does not see lower levels
    torch.testing.assert_close(again[1], out[1])
    assert not torch.allclose(again[0], out[0])
    top_bumped = dfp([x[0], x[1], x[2] + 1.0], context)
    assert not torch.allclose(top_bumped[0], out[0])  # the top level reaches the finest one


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_matrix_adaptive_pooling_equals_torch(bins):
    x = torch.randn(2, 3, 7, 10)
    torch.testing.assert_close(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins))


# --- parameter counts (Table 3, 19 classes) -------------------------------------------------------------------


def inference_params(model: torch.nn.Module) -> int:
    """Parameters used at test time: the auxiliary head is dropped."""
    return sum(p.numel() for name, p in model.named_parameters() if ".aux_head." not in name)


@pytest.mark.parametrize(("head", "paper_m"), [("psp", 65.6), ("gff", 69.7), ("gff_dfp", 70.5)])
def test_parameter_counts_match_table_3(head, paper_m):
    model = build_model("gff", 19, head=head)
    assert model.config["backbone"] == "resnet101" and model.backbone.output_stride == 8
    assert inference_params(model) == pytest.approx(paper_m * 1e6, rel=0.02)


def test_default_model_is_the_full_paper_model():
    model = build_model("gff", 19)
    assert model.decoder.head is not None and model.decoder.head.dfp is not None
    assert model.aux_weights == (0.4,) and model.decoder.aux_level == 2
    assert input_spec_for("gff").depth_encoding == "none"


# --- forward / backward ---------------------------------------------------------------------------------------


def test_forward_backward_small_resnet18():
    torch.manual_seed(0)
    model = build_model("gff", 5, backbone="resnet18")
    rgb = torch.randn(2, 3, 64, 48)
    out = model(rgb, None)
    assert out["out"].shape == (2, 5, 64, 48) and [a.shape for a in out["aux"]] == [(2, 5, 64, 48)]
    (out["out"].mean() + 0.4 * out["aux"][0].mean()).backward()
    head = model.decoder.head
    for p in (head.gff.gate_convs[0].weight, head.dfp.layers[-1][1][0].weight, model.backbone.conv1.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(rgb, None).shape == (2, 5, 64, 48)
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(torch.zeros(2, 4, 64, 48))


def test_decoder_on_rgbd_style_levels():
    """ACNet-like fused levels (1/4 … 1/32, undilated): logits at the requested size, aux in train mode only."""
    torch.manual_seed(0)
    chans = (16, 24, 32, 40)
    feats = [torch.randn(2, c, 16 // 2**i, 20 // 2**i) for i, c in enumerate(chans)]
    dec = GFFDecoder(chans, 3, ppm_channels=8, channels=8, refine_channels=6, dfp_bottleneck=4, dfp_growth=2)
    logits, aux = dec(feats, out_size=(64, 80))
    assert logits.shape == (2, 3, 64, 80) and [a.shape for a in aux] == [(2, 3, 64, 80)]
    dec.eval()
    assert dec(feats)[0].shape == (2, 3, 16, 20) and dec(feats)[1] == []
    head = GFFHead(chans, None, context_channels=8, channels=8, refine_channels=6, dfp_growth=2).eval()
    assert head(feats, torch.randn(2, 8, 2, 2)).shape == (2, head.out_channels, 16, 20)
    with pytest.raises(ValueError, match="4 levels"):
        dec(feats[:3])


# --- ONNX -----------------------------------------------------------------------------------------------------


def test_onnx_matches_torch_with_uneven_pyramid_bins():
    """48×80 input → 6×10 at output stride 8: 10 is not a multiple of 3 or 6 (torch's adaptive pooling would not
    export)."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = GFFNet(4, depth=18).eval()
    rgb = torch.randn(1, 3, 48, 80)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (rgb,), buf, dynamo=False, opset_version=17, input_names=["rgb"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"rgb": rgb.numpy()})
    with torch.no_grad():
        ref = model(rgb).numpy()
    assert got.shape == ref.shape == (1, 4, 48, 80)
    assert 0.1 < np.abs(ref).max() < 100
    assert np.abs(got - ref).max() < 1e-4


# --- GFF as the decoder of the RGB-D encoders (our extension) ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "second"),
    [("acnet", torch.randn(2, 1, 64, 64)), ("sagate", torch.randn(2, 3, 64, 64))],
)
def test_gff_decoder_option_on_rgbd_models(name, second):
    torch.manual_seed(0)
    model = build_model(name, 4, backbone="resnet18", decoder="gff")
    assert isinstance(model.gff if name == "acnet" else model.head, GFFDecoder)
    assert model.aux_weights == (0.4,)
    rgb = torch.randn(2, 3, 64, 64)
    out = model(rgb, second)
    assert out["out"].shape == (2, 4, 64, 64) and [a.shape for a in out["aux"]] == [(2, 4, 64, 64)]
    out["out"].mean().backward()
    model.eval()
    with torch.no_grad():
        assert model(rgb, second).shape == (2, 4, 64, 64)
    with pytest.raises(ValueError, match="decoder"):
        build_model(name, 4, backbone="resnet18", decoder="fpn")
