"""SSMA (Valada, Mohan & Burgard, IJCV 2019): two AdapNet++ encoders fused by self-supervised model adaptation.

The structure follows paper §4 and the authors' TensorFlow code (``DeepSceneSeg/SSMA``, ``models/SSMA.py``):

* Two modality-specific :class:`~rgbd_seg_ros.models.adapnet.AdapNetEncoder` s: RGB, plus HHA or jet-coloured
  depth. Each has its own eASPP and 24-channel skips.
* An :class:`SSMABlock` fuses the two eASPP outputs (latent, C = 256, η = 16) and each pair of skips
  (1/8 and 1/4, C = 24, η = 6). The block computes
  ``f = BN(W3 ∗ (σ(W2 ∗ ReLU(W1 ∗ [Xa, Xb])) ⊙ [Xa, Xb]))``, where W1 and W2 are 3×3 convs with bias, and
  ``⊙`` gates every element of every channel at every pixel.
* One AdapNet++ decoder with the channel attention (Eq. 13–15) on both fused skips.

There is no loss on the SSMA blocks; they are trained through the segmentation loss ("self-supervised").

**Paper vs released code** (``variant``; each item can be overridden on its own):

===============================  ====================================  =====================================
item                             ``"code"`` (default)                  ``"paper"``
===============================  ====================================  =====================================
latent fusion conv W3            1×1 + BN                              3×3 + BN
skip fusion conv W3              3×3 with bias, no BN                  3×3 + BN
η divides                        2C (latent 512→32, skips 48→8)        C (latent 256→16, skips 24→4)
encoder options                  AdapNet++ ``"code"``                  AdapNet++ ``"paper"``
===============================  ====================================  =====================================

The default is ``"code"``. It has 56.19 M parameters at 12 classes (the paper reports 56.44 M; the ``"paper"``
variant has 57.08 M), and it is what the released SSMA checkpoints were trained with. Their README mIoU
(Cityscapes RGB-HHA 82.64, RGB-D 82.29) are the paper's figures.

**Staged training** (paper §5.1.2). Train two unimodal AdapNet++ models, then build SSMA with
:func:`build_from_experts` (or call :meth:`SSMA.load_experts` on a built model). This copies only the encoders
(trunk, eASPP and skip convs); the SSMA blocks and the decoder start from He init. ``freeze_encoders=True``
(the code's only option and the paper's stage 3) stops their gradients and keeps their BN and dropout in
inference mode. :meth:`SSMA.param_groups` gives the paper's learning rates: 1e-4 for the encoders and 1e-3
for the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from rgbd_seg_ros.depth.encode import InputSpec
from rgbd_seg_ros.models import adapnet
from rgbd_seg_ros.models.adapnet import (
    AUX_WEIGHTS,
    SKIP_CHANNELS,
    TF_BN,
    AdapNetDecoder,
    AdapNetEncoder,
    AdapNetPP,
    DilationPair,
    TFVar,
    check_input,
    decoder_tf_map,
    encoder_tf_map,
    he_init,
    load_encoder_weights,
    upsample_aux,
)
from rgbd_seg_ros.models.registry import register

Variant = Literal["code", "paper"]
SSMA_VARIANTS: dict[str, dict] = {
    "code": {"latent_fusion_kernel": 1, "skip_fusion_bn": False, "eta_on": "2c"},
    "paper": {"latent_fusion_kernel": 3, "skip_fusion_bn": True, "eta_on": "c"},
}
ExpertSource = str | Path | Mapping[str, Tensor] | nn.Module
#: Our SSMA blocks ← the authors' (reduce, expand, fuse) scopes in ``SSMA._setup``.
_TF_SSMA_BLOCKS = {
    "ssma_latent": ("conv511", "conv512", "conv515"),
    "ssma_skip8": ("conv513", "conv514", "conv552"),
    "ssma_skip4": ("conv518", "conv519", "conv553"),
}


class SSMABlock(nn.Module):
    """Self-supervised model adaptation block: fuse two B×C×H×W maps into one B×C×H×W map.

    Args:
        channels: C, the channels of each input and of the output.
        eta: bottleneck reduction ratio η of the gate.
        eta_on: ``"2c"``, hidden width 2C/η (the code), or ``"c"``, hidden width C/η (the paper's notation).
        fusion_kernel: kernel size of the fusion conv W3 (3 in the paper; the code uses 1 for the latent block).
        fusion_bn: BN after W3 (then W3 has no bias); without it W3 carries a bias (the code's skip blocks).

    ``gate(xa, xb)`` returns the sigmoid gate s (B×2C×H×W); ``forward`` returns ``BN(W3 ∗ (s ⊙ [xa, xb]))``.
    """

    def __init__(
        self,
        channels: int,
        eta: int,
        eta_on: Literal["c", "2c"] = "2c",
        fusion_kernel: int = 1,
        fusion_bn: bool = True,
    ) -> None:
        super().__init__()
        if eta_on not in ("c", "2c"):
            raise ValueError(f"eta_on must be 'c' or '2c', got {eta_on!r}")
        if fusion_kernel not in (1, 3):
            raise ValueError(f"fusion_kernel must be 1 or 3, got {fusion_kernel}")
        both = 2 * channels
        hidden = max(1, (both if eta_on == "2c" else channels) // eta)
        self.reduce = nn.Conv2d(both, hidden, 3, padding=1)
        self.expand = nn.Conv2d(hidden, both, 3, padding=1)
        self.fuse = nn.Conv2d(both, channels, fusion_kernel, padding=fusion_kernel // 2, bias=not fusion_bn)
        self.bn = nn.BatchNorm2d(channels) if fusion_bn else nn.Identity()

    def gate(self, xa: Tensor, xb: Tensor) -> Tensor:
        """The recalibration s = σ(W2 ∗ ReLU(W1 ∗ [xa, xb])), B×2C×H×W in (0, 1)."""
        return torch.sigmoid(self.expand(torch.relu(self.reduce(torch.cat([xa, xb], dim=1)))))

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        if xa.shape != xb.shape:
            raise ValueError(f"SSMA inputs differ in shape: {tuple(xa.shape)} vs {tuple(xb.shape)}")
        xab = torch.cat([xa, xb], dim=1)
        return self.bn(self.fuse(self.gate(xa, xb) * xab))


class SSMA(nn.Module):
    """SSMA fusion of RGB and a 3-channel depth image (HHA or jet): ``forward(rgb, second)``.

    The inputs are both B×3×H×W raw 0–255, with H and W multiples of 16. The output is B×K×H×W logits in eval
    mode, or ``{"out", "aux": [aux 1/4, aux 1/8]}`` in train mode (:attr:`aux_weights` (0.6, 0.5); the
    authors' fusion code trains without them, which is ``aux=False``). See the module docstring for the options.
    """

    def __init__(
        self,
        num_classes: int,
        modality: Literal["hha", "jet"] = "hha",
        variant: Variant = "code",
        latent_fusion_kernel: int | None = None,
        skip_fusion_bn: bool | None = None,
        eta_on: Literal["c", "2c"] | None = None,
        eta_latent: int = 16,
        eta_skip: int = 6,
        dilations: str | Sequence[DilationPair] | None = None,
        dropout: float | None = None,
        first_shortcut: Literal["conv1", "input"] | None = None,
        aux: bool = True,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        if modality not in ("hha", "jet"):
            raise ValueError(f"SSMA's second modality must be 'hha' or 'jet', got {modality!r}")
        if variant not in SSMA_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(SSMA_VARIANTS)}, got {variant!r}")
        cfg = dict(SSMA_VARIANTS[variant])
        overrides = {"latent_fusion_kernel": latent_fusion_kernel, "skip_fusion_bn": skip_fusion_bn, "eta_on": eta_on}
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        self.modality = modality
        enc = {"dilations": dilations, "dropout": dropout, "first_shortcut": first_shortcut, "tf_padding": tf_padding}
        self.encoder_rgb = AdapNetEncoder(variant, **enc)
        self.encoder_depth = AdapNetEncoder(variant, **enc)
        self.ssma_latent = SSMABlock(256, eta_latent, cfg["eta_on"], cfg["latent_fusion_kernel"], fusion_bn=True)
        self.ssma_skip8 = SSMABlock(SKIP_CHANNELS, eta_skip, cfg["eta_on"], 3, fusion_bn=cfg["skip_fusion_bn"])
        self.ssma_skip4 = SSMABlock(SKIP_CHANNELS, eta_skip, cfg["eta_on"], 3, fusion_bn=cfg["skip_fusion_bn"])
        self.decoder = AdapNetDecoder(num_classes, aux=aux, skip_attention=True)
        self.aux_weights = AUX_WEIGHTS if aux else ()
        self.encoders_frozen = False
        he_init(self)

    @property
    def encoders(self) -> tuple[AdapNetEncoder, AdapNetEncoder]:
        return self.encoder_rgb, self.encoder_depth

    def forward(self, rgb: Tensor, second: Tensor) -> Tensor | dict[str, Tensor | list]:
        check_input(rgb, "rgb")
        check_input(second, f"second input ({self.modality})")
        if rgb.shape[0] != second.shape[0] or rgb.shape[2:] != second.shape[2:]:
            raise ValueError(f"rgb {tuple(rgb.shape)} and {self.modality} {tuple(second.shape)} differ in size")
        la, s8a, s4a = self.encoder_rgb(rgb)
        lb, s8b, s4b = self.encoder_depth(second)
        out, aux = self.decoder(self.ssma_latent(la, lb), self.ssma_skip8(s8a, s8b), self.ssma_skip4(s4a, s4b))
        if self.training:
            return {"out": out, "aux": upsample_aux(aux, tuple(rgb.shape[2:]))}
        return out

    def tf_variable_map(self) -> dict[str, TFVar]:
        """This model's state-dict keys → the authors' TF variables (``DeepSceneSeg/SSMA`` ``models/SSMA.py``).

        Experts under ``rgb/resnet_v2_50/`` and ``depth/resnet_v2_50/``; at the root the fusion blocks (latent:
        ``conv511``/``conv512`` gate, ``conv515`` 1×1 + BN; 1/8 skips: ``conv513``/``conv514``, ``conv552``; 1/4
        skips: ``conv518``/``conv519``, ``conv553``; all with biases except the BN-followed ``conv515``) and the
        decoder with its skip attention (``conv550``/``conv551``). The released fusion checkpoints have no auxiliary
        heads: convert them into ``aux=False``.
        """
        m = {f"encoder_rgb.{k}": v for k, v in encoder_tf_map(self.encoder_rgb, "rgb/resnet_v2_50/").items()}
        m |= {f"encoder_depth.{k}": v for k, v in encoder_tf_map(self.encoder_depth, "depth/resnet_v2_50/").items()}
        for block, (reduce, expand, fuse) in _TF_SSMA_BLOCKS.items():
            module = getattr(self, block)
            for ours, scope in (("reduce", reduce), ("expand", expand)):
                m[f"{block}.{ours}.weight"] = TFVar(f"{scope}/weights")
                m[f"{block}.{ours}.bias"] = TFVar(f"{scope}/biases")
            m[f"{block}.fuse.weight"] = TFVar(f"{fuse}/weights")
            if isinstance(module.bn, nn.BatchNorm2d):
                m |= {f"{block}.bn.{k}": TFVar(f"{fuse}/BatchNorm/{v}") for k, v in TF_BN.items()}
            else:
                m[f"{block}.fuse.bias"] = TFVar(f"{fuse}/biases")
        return m | {f"decoder.{k}": v for k, v in decoder_tf_map(self.decoder).items()}

    # --- staged training -------------------------------------------------------------------------------------
    def load_experts(self, rgb: ExpertSource, depth: ExpertSource, freeze: bool | None = None) -> None:
        """Initialise the two encoders from trained unimodal AdapNet++ models (paper §5.1.2, stage 2).

        Each source is an :class:`AdapNetPP` (its modality must match), a state dict, or a local weights file
        (safetensors or torch, read with ``weights_only=True``). A state dict may be a whole AdapNet++
        (``encoder.*`` keys are taken, the decoder is ignored) or a bare encoder. ``freeze`` calls
        :meth:`freeze_encoders` afterwards (None leaves the current setting unchanged).

        Raises:
            ValueError: a source lacks encoder weights, has mismatched shapes, or is a model of the wrong modality.
        """
        for encoder, source, modality in ((self.encoder_rgb, rgb, "rgb"), (self.encoder_depth, depth, self.modality)):
            encoder.load_state_dict(_encoder_state(source, modality))
        if freeze is not None:
            self.freeze_encoders(freeze)

    def freeze_encoders(self, freeze: bool = True) -> None:
        """Stop (or restart) gradients into both encoders; frozen encoders keep BN statistics and dropout in eval."""
        self.encoders_frozen = freeze
        for encoder in self.encoders:
            encoder.requires_grad_(not freeze)
        self.train(self.training)

    def train(self, mode: bool = True) -> SSMA:
        super().train(mode)
        if self.encoders_frozen:
            for encoder in self.encoders:
                encoder.eval()
        return self

    def param_groups(self, encoder_lr: float = 1e-4, fusion_lr: float = 1e-3) -> list[dict]:
        """Optimizer groups for stage 2: encoders at ``encoder_lr``, SSMA blocks and decoder at ``fusion_lr``.

        Frozen encoders are left out; for the paper's stage 3 use ``freeze_encoders()`` and ``fusion_lr=1e-5``.
        """
        enc_ids = {id(p) for e in self.encoders for p in e.parameters()}
        groups = []
        if not self.encoders_frozen:
            groups.append({"params": [p for e in self.encoders for p in e.parameters()], "lr": encoder_lr})
        groups.append({"params": [p for p in self.parameters() if id(p) not in enc_ids], "lr": fusion_lr})
        return groups


def _encoder_state(source: ExpertSource, modality: str) -> dict[str, Tensor]:
    """The encoder sub-state of ``source`` (see :meth:`SSMA.load_experts`)."""
    if isinstance(source, AdapNetPP):
        if source.modality != modality:
            raise ValueError(f"expected a unimodal AdapNet++ on {modality!r}, got one on {source.modality!r}")
        return source.encoder.state_dict()
    if isinstance(source, AdapNetEncoder):
        return source.state_dict()
    if isinstance(source, nn.Module):
        raise ValueError(f"expected an AdapNetPP or AdapNetEncoder, got {type(source).__name__}")
    if isinstance(source, (str, Path)):
        from rgbd_seg_ros.models.checkpoints import read_state_dict

        name = str(source)
        state = read_state_dict(source)
    else:
        name, state = "state dict", dict(source)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if "conv1.weight" not in state:
        raise ValueError(f"{name} holds no AdapNet++ encoder weights (no 'encoder.conv1.weight' or 'conv1.weight')")
    return state


def input_spec(modality: Literal["hha", "jet"] = "hha", **_options) -> InputSpec:
    """As AdapNet++: raw 0–255 BGR plus a raw 0–255 3-channel HHA or jet image; H, W multiples of 16."""
    return adapnet.input_spec(modality=modality)


@register(
    "ssma",
    input_spec=input_spec,
    default_backbone="preact_resnet50",
    backbones=("preact_resnet50",),
    description="SSMA: two AdapNet++ encoders (RGB + HHA/jet) fused by SSMA blocks, one AdapNet++ decoder",
)
def build_ssma(
    num_classes: int,
    backbone: str = "preact_resnet50",
    pretrained: str | None = None,
    freeze_encoders: bool = False,
    **options,
) -> SSMA:
    """Registry builder. ``options`` as :class:`SSMA` (modality, variant, …).

    Args:
        pretrained: a local file of encoder weights loaded into both encoders (see
            :func:`~rgbd_seg_ros.models.adapnet.load_encoder_weights`), e.g. the authors' ImageNet init.
        freeze_encoders: freeze both encoders (paper stage 3 / the authors' only fusion mode).

    For staged training use :func:`build_from_experts` (the expert files are not build options, so a saved
    SSMA checkpoint rebuilds without them).
    """
    model = SSMA(num_classes, **options)
    if pretrained is not None:
        for encoder in model.encoders:
            load_encoder_weights(encoder, pretrained)
    model.freeze_encoders(freeze_encoders)
    return model


def build_from_experts(
    num_classes: int, rgb: ExpertSource, depth: ExpertSource, freeze_encoders: bool = False, **options
) -> SSMA:
    """Paper §5.1.2: ``build_model("ssma", …)`` with both encoders copied from trained unimodal AdapNet++ models.

    ``rgb`` / ``depth``: :class:`AdapNetPP` models, state dicts or local weight files (see
    :meth:`SSMA.load_experts`); ``depth``'s modality must be ``options["modality"]`` (default ``"hha"``).
    The SSMA blocks and the decoder keep their fresh He init.
    """
    from rgbd_seg_ros.models.registry import build_model

    model = build_model("ssma", num_classes, freeze_encoders=freeze_encoders, **options)
    model.load_experts(rgb, depth)
    return model


__all__ = ["SSMA", "SSMABlock", "build_from_experts", "build_ssma"]
