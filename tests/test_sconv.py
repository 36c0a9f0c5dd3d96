"""S-Conv: reduces to a plain conv, matches a from-scratch DCNv2 reference, offset layout, gradients; the CPU
gather path equals torchvision's deform_conv2d (values and gradients) on every S-Conv shape of SGNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models import sconv as sconv_module
from rgbd_seg_ros.models.sconv import (
    SConv,
    deform_conv2d_gather,
    deform_conv2d_taps,
    padded_rows,
    resize_guidance,
    sconv_implementation,
    use_sconv_implementation,
)
from rgbd_seg_ros.models.sconv import bilinear_taps as make_taps

#: "Equal" within a relative tolerance: max |a − b| ≤ tol · max |b| (b the reference), per dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def reference_modulated_deform_conv(x, offset, mask, weight, stride=1, padding=1, dilation=1) -> np.ndarray:
    """DCNv2 written from its definition, in float64 loops (the authors' CUDA kernel's semantics).

    offset channel 2k = row shift, 2k+1 = column shift of tap k (row-major); a sample point outside
    (-1, H) × (-1, W) is 0, and bilinear corners outside the image contribute 0.
    """
    x, offset, weight = (t.detach().double().numpy() for t in (x, offset, weight))
    mask = np.ones((offset.shape[0], 9, *offset.shape[2:])) if mask is None else mask.detach().double().numpy()
    b, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    out = np.zeros((b, cout, ho, wo))

    def pixel(img, r, q):
        return img[:, r, q] if 0 <= r < h and 0 <= q < w else np.zeros(c)

    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                cols = np.zeros((c, kh * kw))
                for k in range(kh * kw):
                    ki, kj = divmod(k, kw)
                    py = i * stride - padding + ki * dilation + offset[n, 2 * k, i, j]
                    px = j * stride - padding + kj * dilation + offset[n, 2 * k + 1, i, j]
                    if not (-1 < py < h and -1 < px < w):
                        continue
                    y0, x0 = int(np.floor(py)), int(np.floor(px))
                    ly, lx = py - y0, px - x0
                    val = (
                        (1 - ly) * (1 - lx) * pixel(x[n], y0, x0)
                        + (1 - ly) * lx * pixel(x[n], y0, x0 + 1)
                        + ly * (1 - lx) * pixel(x[n], y0 + 1, x0)
                        + ly * lx * pixel(x[n], y0 + 1, x0 + 1)
                    )
                    cols[:, k] = val * mask[n, k, i, j]
                out[n, :, i, j] = weight.reshape(cout, c, kh * kw).reshape(cout, -1) @ cols.reshape(-1)
    return out


def _unit_mask(sconv: SConv) -> None:
    """Make the weight generator output sigmoid(40) == 1.0 exactly in float32."""
    torch.nn.init.zeros_(sconv.weight_generator2.weight)
    torch.nn.init.constant_(sconv.weight_generator2.bias, 40.0)


@pytest.mark.parametrize(("stride", "dilation", "guide_channels"), [(1, 1, 1), (2, 1, 1), (1, 2, 3)])
def test_zero_offsets_and_unit_mask_equal_plain_conv(stride, dilation, guide_channels):
    torch.manual_seed(0)
    sconv = SConv(6, 5, stride=stride, dilation=dilation, guide_channels=guide_channels).eval()
    _unit_mask(sconv)
    x = torch.randn(2, 6, 11, 13)
    guide = torch.rand(2, guide_channels, 23, 27) * 5  # any resolution: resized to x's
    with torch.no_grad():
        offset, mask = sconv.offsets_and_mask((11, 13), guide)
        y = sconv(x, guide)
    assert offset.abs().max() == 0  # η is zero-initialised
    assert torch.equal(mask, torch.ones_like(mask))
    expected = F.conv2d(x, sconv.weight, stride=stride, padding=dilation, dilation=dilation)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_matches_dcnv2_reference_with_learned_offsets_and_mask(stride):
    torch.manual_seed(1)
    sconv = SConv(3, 4, stride=stride, guide_channels=1).eval()
    torch.nn.init.normal_(sconv.offset_generator.weight, std=0.05)  # offsets of a few pixels, fractional
    torch.nn.init.normal_(sconv.offset_generator.bias, std=1.0)
    x = torch.randn(1, 3, 7, 9)
    guide = torch.rand(1, 1, 7, 9) * 4
    with torch.no_grad():
        offset, mask = sconv.offsets_and_mask((7, 9), guide)
        y = sconv(x, guide)
        s = sconv.spatial_projector(resize_guidance(guide, (7, 9)))
    assert offset.abs().max() > 1.0 and (offset - offset.round()).abs().max() > 0.1
    # main DCNv2
    ref = reference_modulated_deform_conv(x, offset, mask, sconv.weight, stride=stride)
    np.testing.assert_allclose(y.double().numpy(), ref, atol=1e-4, rtol=1e-4)
    # weight generator: DCNv1 (64→64) on S' at the same offsets, then 1×1 (64→9), then sigmoid
    g = reference_modulated_deform_conv(s, offset, None, sconv.weight_generator1.weight, stride=stride)
    w2 = sconv.weight_generator2.weight.detach().double().numpy()[:, :, 0, 0]
    logits = np.einsum("ko,bohw->bkhw", w2, g) + sconv.weight_generator2.bias.detach().double().numpy()[:, None, None]
    np.testing.assert_allclose(mask.double().numpy(), 1 / (1 + np.exp(-logits)), atol=1e-5)


@pytest.mark.parametrize(("channel", "shift"), [(1, (0, 1)), (0, (1, 0))])
def test_offset_layout_is_dy_dx_per_tap(channel, shift):
    """Adding +1 to every tap's channel 2k+1 (x) or 2k (y) samples the next column / row."""
    torch.manual_seed(2)
    sconv = SConv(4, 4).eval()
    _unit_mask(sconv)
    torch.nn.init.zeros_(sconv.offset_generator.bias)
    with torch.no_grad():
        sconv.offset_generator.bias[channel::2] = 1.0
        x = torch.randn(1, 4, 10, 12)
        y = sconv(x, torch.ones(1, 1, 10, 12))
    plain = F.conv2d(x, sconv.weight, padding=1)
    dy, dx = shift
    torch.testing.assert_close(y[..., 1:-2, 1:-2], plain[..., 1 + dy : -2 + dy or None, 1 + dx : -2 + dx or None])


def test_gradients_reach_offset_and_weight_generators():
    torch.manual_seed(3)
    sconv = SConv(4, 6, stride=2, guide_channels=3).train()
    x = torch.randn(2, 4, 12, 16, requires_grad=True)
    guide = torch.randn(2, 3, 24, 32)
    sconv(x, guide).square().mean().backward()
    for name, param in sconv.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_bad_guidance_is_rejected():
    sconv = SConv(4, 4, guide_channels=1)
    with pytest.raises(ValueError, match=r"B×1×H×W"):
        sconv(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="guidance"):
        sconv(torch.randn(1, 4, 8, 8), torch.randn(8, 8))


# --- the gather implementation against torchvision's operator -------------------------------------------------


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert scale > 0, f"{what}: reference is all zero, the comparison would be vacuous"
    assert diff <= tol * scale, f"{what}: max |diff| {diff:.3g} > {tol:g} × max |ref| {scale:.3g}"


def border_offsets(b: int, k: int, ho: int, wo: int, h: int, w: int, stride: int, pad: int, dil: int, dtype):
    """Offsets putting sample points at the kernel's corner cases, plus random fractional shifts elsewhere.

    Points land exactly on pixels (zero offset: one-sided gradients), exactly on −1 and on H−1 / H, less than
    1 px outside the image (−1 < p < 0, H − 1 < p < H), in (−2, −1], and far outside.
    """
    gen = torch.Generator().manual_seed(7)
    off = torch.randn(b, k, 2, ho, wo, generator=gen, dtype=dtype) * 1.5
    i = torch.arange(ho).view(ho, 1).expand(ho, wo)
    j = torch.arange(wo).view(1, wo).expand(ho, wo)
    tap = torch.arange(k)
    base_y = (i * stride - pad).view(1, ho, wo) + (tap // 3 * dil).view(k, 1, 1)
    base_x = (j * stride - pad).view(1, ho, wo) + (tap % 3 * dil).view(k, 1, 1)
    targets = {  # absolute positions; offset = target − base
        0: None,  # zero offset
        1: (-1.0, -1.0),
        2: (h - 1.0, w - 1.0),
        3: (float(h), float(w)),
        4: (-0.4, w - 0.3),
        5: (h - 0.25, -0.7),
        6: (-1.5, 2.5),
        7: (3.25, -1.0),
        8: (-60.0, w + 40.0),
    }
    for row, target in targets.items():  # output row `row` of batch 0 (all its taps), when the map has it
        if row >= ho:
            break
        if target is None:
            off[0, :, :, row] = 0
        else:
            off[0, :, 0, row] = target[0] - base_y[:, row].to(dtype)
            off[0, :, 1, row] = target[1] - base_x[:, row].to(dtype)
    return off.view(b, 2 * k, ho, wo)


def _op_outputs_and_grads(fn, x, offset, mask, weight, bias, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    out = fn(leaves[0], leaves[1], leaves[3], leaves[4], mask=leaves[2], **kw)
    upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # non-uniform output gradient
    grads = torch.autograd.grad(out, leaves, upstream)
    return dict(zip(("output", "d input", "d offset", "d mask", "d weight", "d bias"), (out, *grads)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", ["sample_first", "gemm_first"])
@pytest.mark.parametrize(("stride", "pad", "dil"), [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_gather_equals_torchvision_forward_and_backward_at_borders(dtype, order, stride, pad, dil):
    torch.manual_seed(4)
    b, cin, cout, h, w = 2, 5, 7, 9, 11
    ho, wo = (h + 2 * pad - 2 * dil - 1) // stride + 1, (w + 2 * pad - 2 * dil - 1) // stride + 1
    x = torch.randn(b, cin, h, w, dtype=dtype)
    offset = border_offsets(b, 9, ho, wo, h, w, stride, pad, dil, dtype)
    mask = torch.rand(b, 9, ho, wo, dtype=dtype)
    weight, bias = torch.randn(cout, cin, 3, 3, dtype=dtype), torch.randn(cout, dtype=dtype)
    kw = {"stride": stride, "padding": pad, "dilation": dil}

    def gather(x, offset, weight, bias, mask, **kw):
        taps = make_taps(offset, (h, w), 3, kw["stride"], kw["padding"], kw["dilation"])
        return deform_conv2d_taps(padded_rows(x), taps, weight, bias, mask, order=order)

    expected = _op_outputs_and_grads(torchvision.ops.deform_conv2d, x, offset, mask, weight, bias, **kw)
    actual = _op_outputs_and_grads(gather, x, offset, mask, weight, bias, **kw)
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        assert_close_rel(actual[name], expected[name], TOLERANCE[dtype], name)


def test_gather_matches_float64_dcnv2_loop_at_borders():
    """Second, independent oracle: the from-scratch float64 loop, with and without a mask."""
    torch.manual_seed(5)
    h, w, stride = 7, 8, 2
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(1, 3, h, w, dtype=torch.float64)
    offset = border_offsets(1, 9, ho, wo, h, w, stride, 1, 1, torch.float64)
    mask = torch.rand(1, 9, ho, wo, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for m in (mask, None):
        got = deform_conv2d_gather(x, offset, weight, stride=stride, padding=1, mask=m)
        ref = reference_modulated_deform_conv(x, offset, m, weight, stride=stride)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_gather_gradients_pass_gradcheck_off_the_pixel_grid():
    """Analytic gradients equal finite differences where the operator is smooth (no point on a pixel line)."""
    torch.manual_seed(6)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    offset = (torch.rand(1, 18, 3, 4, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    offset.data[offset.data.abs() < 0.1] = 0.5  # every position ≥ 0.1 px off the pixel grid (incl. the border)
    mask = torch.rand(1, 9, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, offset, mask, weight, bias):
        return deform_conv2d_gather(x, offset, weight, bias, stride=2, padding=1, mask=mask)

    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight, bias), eps=1e-6, atol=1e-7)


def test_gather_rejects_groups_it_does_not_implement():
    x, weight = torch.randn(1, 4, 5, 5), torch.randn(2, 2, 3, 3)  # weight groups = 2
    with pytest.raises(ValueError, match="groups=1"):
        deform_conv2d_gather(x, torch.zeros(1, 18, 3, 3), weight)
    with pytest.raises(ValueError, match="one offset group"):
        deform_conv2d_gather(x, torch.zeros(1, 36, 3, 3), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="order"):
        taps = make_taps(torch.zeros(1, 18, 3, 3), (5, 5))
        deform_conv2d_taps(padded_rows(x), taps, torch.randn(2, 4, 3, 3), order="fastest")


def sgnet_sconv_configs() -> list[tuple[int, int, int, int, int]]:
    """(in, out, stride, dilation, guide channels) of every S-Conv in SGNet R18/R50/R101 (built on meta)."""
    configs = set()
    for backbone in ("resnet18", "resnet50", "resnet101"):
        with torch.device("meta"):
            model = build_model("sgnet", 40, backbone=backbone)
        for m in model.modules():
            if isinstance(m, SConv):
                configs.add((m.in_channels, m.out_channels, m.stride, m.dilation, m.guide_channels))
    return sorted(configs)


SGNET_CONFIGS = sgnet_sconv_configs()


def _module_outputs_and_grads(sconv: SConv, x: torch.Tensor, guide: torch.Tensor, impl: str):
    sconv.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with use_sconv_implementation(impl):
        out = sconv(x, guide)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    # in train mode a conv bias right before BN has a zero gradient (BN subtracts the batch mean): only noise
    before_bn = {f"spatial_projector.{i}.bias" for i in (0, 3, 6)} if sconv.training else set()
    grads = {f"d {name}": p.grad.clone() for name, p in sconv.named_parameters() if name not in before_bn}
    return {"output": out.detach(), "d input": x.grad, **grads}


def test_sgnet_sconv_configs_are_enumerated():
    strides = {c[2] for c in SGNET_CONFIGS}
    assert strides == {1, 2} and (128, 64, 1, 1, 1) in SGNET_CONFIGS and (512, 512, 1, 1, 1) in SGNET_CONFIGS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offsets", ["initial", "learned"])
@pytest.mark.parametrize("config", SGNET_CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_module_gather_equals_torchvision_on_every_sgnet_shape(config, offsets, dtype):
    """Output and the gradients of the input and of every parameter (main, offset and mask generators)."""
    cin, cout, stride, dilation, guide_channels = config
    torch.manual_seed(8)
    sconv = SConv(cin, cout, stride, dilation, guide_channels).to(dtype).train()
    if offsets == "learned":  # fractional offsets of a few pixels; "initial": zero offsets (every tap on a pixel)
        torch.nn.init.normal_(sconv.offset_generator.weight, std=0.05)
        torch.nn.init.normal_(sconv.offset_generator.bias, std=1.5)
    x = torch.randn(2, cin, 10, 13, dtype=dtype)
    guide = torch.rand(2, guide_channels, 19, 25, dtype=dtype) * 4  # resized to x's size inside
    expected = _module_outputs_and_grads(sconv, x, guide, "torchvision")
    actual = _module_outputs_and_grads(sconv, x, guide, "gather")
    assert set(actual) == set(expected) and len(expected) == 2 + len(list(sconv.parameters())) - 3
    for name, value in expected.items():
        if name == "d offset_generator.weight" and offsets == "initial":
            assert value.abs().max() > 0  # a zero-offset S-Conv still learns offsets: one-sided gradients
        assert_close_rel(actual[name], value, TOLERANCE[dtype], name)


def test_sconv_dilated_option_equals_torchvision():
    """``sconv_dilation=True`` gives the main conv other taps than the weight generator's."""
    torch.manual_seed(9)
    sconv = SConv(6, 5, stride=1, dilation=2).double()
    torch.nn.init.normal_(sconv.offset_generator.bias, std=1.5)
    x, guide = torch.randn(1, 6, 9, 10, dtype=torch.float64), torch.rand(1, 1, 9, 10, dtype=torch.float64)
    expected = _module_outputs_and_grads(sconv, x, guide, "torchvision")
    actual = _module_outputs_and_grads(sconv, x, guide, "gather")
    for name, value in expected.items():
        assert_close_rel(actual[name], value, TOLERANCE[torch.float64], name)


def test_implementation_is_chosen_per_device_and_can_be_forced():
    assert sconv_implementation("cpu") == "gather"
    assert sconv_implementation(torch.device("cuda", 0)) == "torchvision"
    assert sconv_implementation("meta") == "torchvision"
    with use_sconv_implementation("torchvision"):
        assert sconv_implementation("cpu") == "torchvision"
        with use_sconv_implementation(None):
            assert sconv_implementation("cpu") == "gather"
    assert sconv_implementation("cpu") == "gather"
    with pytest.raises(ValueError, match="unknown S-Conv implementation 'fast'"):
        with use_sconv_implementation("fast"):
            pass


def test_cpu_training_and_inference_do_not_call_torchvisions_kernel(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torchvision's deform_conv2d was called on the CPU")

    monkeypatch.setattr(sconv_module, "deform_conv2d", forbidden)
    sconv = SConv(4, 6, stride=2, guide_channels=3).train()
    x, guide = torch.randn(2, 4, 12, 16, requires_grad=True), torch.randn(2, 3, 12, 16)
    sconv(x, guide).square().mean().backward()
    with torch.inference_mode():
        sconv.eval()(x, guide)
    assert x.grad.abs().sum() > 0
    with use_sconv_implementation("torchvision"), pytest.raises(AssertionError, match="was called"):
        sconv(x, guide)


def test_state_dict_keys_are_the_authors():
    keys = set(SConv(4, 4).state_dict())
    assert {"weight", "offset_generator.weight", "offset_generator.bias", "weight_generator1.weight"} <= keys
    assert {"weight_generator2.weight", "weight_generator2.bias", "spatial_projector.7.running_var"} <= keys
    assert all(
        k.split(".")[0] in {"weight", "offset_generator", "weight_generator1", "weight_generator2", "spatial_projector"}
        for k in keys
    )


@pytest.mark.slow
def test_onnx_export_keeps_deformconv_and_matches_the_eager_gather_path(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from rgbd_seg_ros.onnx_ops import export_onnx

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sconv = SConv(8, 6, stride=2)

        def forward(self, x, guide):
            return self.sconv(x, guide)

    torch.manual_seed(10)
    model = Block().eval()
    torch.nn.init.normal_(model.sconv.offset_generator.weight, std=0.05)
    torch.nn.init.normal_(model.sconv.offset_generator.bias, std=1.5)  # points near and beyond the borders
    x, guide = torch.randn(1, 8, 15, 17), torch.rand(1, 1, 15, 17) * 4
    path = export_onnx(model, (x, guide), tmp_path / "sconv.onnx", input_names=["x", "guide"])
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("DeformConv") == 2  # weight generator + main conv, as the single ONNX operator
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy(), "guide": guide.numpy()}
    )
    assert sconv_implementation("cpu") == "gather"
    with torch.no_grad():
        eager = model(x, guide)
    assert_close_rel(torch.from_numpy(got), eager, 1e-5, "ONNX Runtime vs eager gather path")
