"""S-Conv: reduces to a plain conv, matches a from-scratch DCNv2 reference, offset layout, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.models.sconv import SConv, resize_guidance


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
