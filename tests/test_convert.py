"""``rgbd-seg convert``: detection of the authors' layouts, strict loading, metadata round trip, bad files, the hint
an authors' file gets where our checkpoint is expected, and the ImageNet initialisations (``model.pretrained=``).

The authors' layouts come from the other tests' transcriptions of their code (SGNet: ``test_checkpoints``, SA-Gate:
``test_sagate``, GFF: ``test_gff_wrn38``, AdapNet++/SSMA: ``test_ssma_tf``); ACNet's attribute names are ours.
Large files are written with expanded (stride-0) tensors: full shapes at a few bytes each.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from entry_points import EXIT_USAGE, rgbd_seg, run
from test_checkpoints import _authors_keys as sgnet_authors_keys
from test_checkpoints import _random_authors_state as sgnet_authors_state
from test_gff_wrn38 import authors_keys as gff_authors_keys
from test_sagate import _to_authors_layout as sagate_authors_layout

from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.backbones import ResNet, identify_resnet_layout, pretrained_reports
from rgbd_seg_ros.models.checkpoints import load_checkpoint, load_official, read_metadata
from rgbd_seg_ros.models.convert import RELEASES, DetectionError, convert, convert_command, detect
from rgbd_seg_ros.settings import stored_input_size


def shapes_of(name: str, k: int, backbone: str, **options) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(name, k, backbone=backbone, **options)
    return {key: tuple(v.shape) for key, v in model.state_dict().items()}


def cheap_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """One random value per tensor, expanded to the full shape (saves as a few bytes)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(1, generator=gen).expand(s) if s else torch.tensor(0) for k, s in shapes.items()}


def acnet_release_file(tmp_path: Path) -> Path:
    """ACNet's released checkpoint layout: ``ckpt_epoch_1195.00.pth`` in PyTorch 0.4's non-zip format."""
    state = cheap_state(shapes_of("acnet", 40, "resnet50"))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # PyTorch 0.4 had none
    path = tmp_path / "ckpt_epoch_1195.00.pth"
    ckpt = {"global_step": 237805, "epoch": 1195, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return path


# -- detection ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "want"),
    [
        (lambda: sgnet_authors_keys(101, 40, aspp=False), ("sgnet", "resnet101", 40, "sgnet-r101-nyuv2")),
        (lambda: sgnet_authors_keys(50, 40, aspp=False), ("sgnet", "resnet50", 40, "sgnet-r50-nyuv2")),
        (lambda: sgnet_authors_keys(101, 40, aspp=True), ("sgnet_aspp", "resnet101", 40, "sgnet_aspp-r101-nyuv2")),
        (lambda: sagate_authors_layout(shapes_of("sagate", 40, "resnet101")),
         ("sagate", "resnet101", 40, "sagate-r101-nyuv2")),
        (lambda: shapes_of("acnet", 40, "resnet50"), ("acnet", "resnet50", 40, "acnet-r50-nyuv2")),
        (lambda: gff_authors_keys(19), ("gff", "wider_resnet38", 19, "gff-wrn38-cityscapes")),
        (lambda: shapes_of("gff", 19, "resnet101", head="gff", gate="channel"), ("gff", "resnet101", 19, None)),
        (lambda: shapes_of("acnet", 37, "resnet18"), ("acnet", "resnet18", 37, None)),
    ],
)  # fmt: skip
def test_detection_of_every_torch_layout(layout, want):
    shapes = {k: tuple(v) for k, v in layout().items()}
    sig = detect(shapes)
    assert (sig.model, sig.backbone, sig.num_classes) == want[:3]
    matches = [r.name for r in RELEASES if r.matches(sig)]
    assert matches == ([want[3]] if want[3] else [])
    if want[:2] == ("gff", "resnet101"):
        assert sig.options == {"head": "gff", "gate": "channel"}


def test_detection_of_the_tensorflow_layouts():
    from test_ssma_tf import decoder_variables, expert_variables, ssma_fusion_variables

    adapnet = {**expert_variables("resnet_v2_50/"), **decoder_variables("resnet_v2_50/", 21, True, False)}
    sig = detect(adapnet)
    assert (sig.model, sig.num_classes, sig.options) == ("adapnet", 21, {"tf_padding": True})
    assert [r.name for r in RELEASES if r.matches(sig)] == [f"adapnet-scannet-{m}" for m in ("rgb", "jet", "hha")]
    ssma = {**expert_variables("rgb/resnet_v2_50/"), **expert_variables("depth/resnet_v2_50/"),
            **ssma_fusion_variables(), **decoder_variables("", 12, False, True)}  # fmt: skip
    sig = detect(ssma)
    assert (sig.model, sig.num_classes, sig.options) == ("ssma", 12, {"tf_padding": True, "aux": False})
    assert {r.name for r in RELEASES if r.matches(sig)} == {
        "ssma-cityscapes-rgb-jet", "ssma-cityscapes-rgb-hha", "ssma-synthia-rgb-jet",
    }  # fmt: skip
    with pytest.raises(DetectionError, match="ImageNet initialisation"):
        detect({"resnet_v2_50/conv1/weights:0": (7, 7, 3, 64), "resnet_v2_50/conv1/weights": (7, 7, 3, 64)})


def test_incomplete_and_unknown_layouts_say_what_is_missing():
    keys = sgnet_authors_keys(50, 40, aspp=False)
    with pytest.raises(DetectionError, match="dsn4 FCN head"):
        detect({k: v for k, v in keys.items() if not k.startswith("dsn4")})
    with pytest.raises(DetectionError, match=r"no classifier tensor 'dsn4\.3\.weight'"):
        detect({k: v for k, v in keys.items() if k != "dsn4.3.weight"})
    with pytest.raises(DetectionError, match="match none of the known layouts"):
        detect({"fc.weight": (10, 4), "encoder.0.weight": (4, 3)})


# -- conversion, metadata -----------------------------------------------------------------------------------------


def test_acnet_release_converts_with_full_metadata_and_runs_without_options(tmp_path):
    src = acnet_release_file(tmp_path)
    result = run(rgbd_seg("convert", str(src), "-o", str(tmp_path / "acnet.safetensors")))
    assert result.returncode == 0, result.stderr
    n = len(torch.load(src, weights_only=True)["state_dict"])  # no num_batches_tracked in PyTorch 0.4 files
    assert f"{n} source tensors → {n} model tensors" in result.stdout and "release acnet-r50-nyuv2" in result.stdout
    assert "ignored (training-only): global_step (237805), epoch (1195), optimizer" in result.stdout
    meta = read_metadata(tmp_path / "acnet.safetensors")
    assert (meta["model"], meta["backbone"], meta["num_classes"], meta["release"]) == (
        "acnet", "resnet50", 40, "acnet-r50-nyuv2",
    )  # fmt: skip
    assert meta["label_set"] == "nyuv2-40" and len(meta["class_names"]) == 40 and meta["class_names"][0] == "wall"
    assert stored_input_size(meta) == (480, 640)
    assert meta["reported_miou"]["value"] == 48.3
    (source,) = meta["source"]["files"]
    assert source == {"name": src.name, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    assert meta["input_spec"]["depth_encoding"] == "depth" and meta["input_spec"]["size_divisor"] == 32
    assert meta["input_spec"]["rgb_norm"]["mean"] == pytest.approx([0.4850, 0.4163, 0.3982], abs=1e-4)
    model, _ = load_checkpoint(tmp_path / "acnet.safetensors")
    assert model.conv1_d.weight.shape == (64, 1, 7, 7)
    # the output exists now: a second run refuses to overwrite it
    again = run(rgbd_seg("convert", str(src), "-o", str(tmp_path / "acnet.safetensors")))
    assert again.returncode == EXIT_USAGE and "exists already" in again.stderr


def test_own_training_output_converts_and_segments_with_no_options(tmp_path):
    """No release fits (ResNet-18 ACNet, 37 classes): the label set follows the class count; the pipeline runs."""
    from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame
    from rgbd_seg_ros.pipeline import Segmenter

    torch.manual_seed(0)
    trained = build_model("acnet", 37, backbone="resnet18").eval()
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3}, path)
    result = convert(path, tmp_path / "mine.safetensors")
    assert result.metadata["label_set"] == "sunrgbd-37" and result.metadata["release"] is None
    assert "input_size" not in result.metadata and result.metadata["reported_miou"] is None
    seg = Segmenter.from_checkpoint(result.path, device="cpu", backend="torch")
    frame = RGBDFrame(
        rgb=torch.randint(0, 255, (64, 96, 3), dtype=torch.uint8).numpy(),
        depth=torch.rand(64, 96).numpy() * 3 + 0.5,
        intrinsics=CameraIntrinsics(80.0, 80.0, 48.0, 32.0, 96, 64),
    )
    out = seg(frame)
    assert out.labels.shape == (64, 96) and int(out.labels.max()) < 37


def test_sgnet_conversion_reports_folded_sconv_biases_and_matches_load_official(tmp_path):
    state = sgnet_authors_state(50, 40, False)
    path = tmp_path / "SGNet(Res50).pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 600, "iteration": 1}, path)
    result = convert(path, tmp_path / "sgnet.safetensors")
    report = result.report
    assert report.release == "sgnet-r50-nyuv2" and set(report.ignored) == {"epoch", "iteration"}
    assert report.folded and all(k.endswith(".conv2.bias") for k in report.folded)  # the all-zero S-Conv biases
    assert report.tensors + len(report.folded) == report.source_tensors
    assert result.metadata["input_spec"]["rgb_order"] == "bgr"  # the caffe convention of the authors' weights
    ours, _ = load_checkpoint(result.path)
    reference = build_model("sgnet", 40, backbone="resnet50")
    load_official(reference, path)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)


def test_gff_release_and_sagate_training_output_convert(tmp_path):
    """GFF's snapshot (NumPy scalar inside) → Cityscapes metadata; an SA-Gate ``epoch-N.pth`` → identical outputs."""
    import numpy as np

    gff = {f"module.{k}": v for k, v in cheap_state(gff_authors_keys(19)).items()}
    torch.save({"state_dict": gff, "epoch": 175, "mean_iu": np.float64(0.81)}, tmp_path / "gff.pth")
    meta = convert(tmp_path / "gff.pth", tmp_path / "gff.safetensors").metadata
    assert (meta["release"], meta["label_set"], meta["input_size"]) == ("gff-wrn38-cityscapes", "cityscapes-19",
                                                                        [1024, 2048])  # fmt: skip
    assert meta["input_spec"]["depth_encoding"] == "none" and meta["reported_miou"]["value"] is None

    torch.manual_seed(0)
    trained = build_model("sagate", 40, backbone="resnet18").eval()
    state = sagate_authors_layout(trained.state_dict())
    torch.save({"model": state, "optimizer": {}, "epoch": 400, "iteration": 9}, tmp_path / "epoch-400.pth")
    result = convert(tmp_path / "epoch-400.pth", tmp_path / "sagate.safetensors")
    assert result.report.release is None and result.metadata["label_set"] == "nyuv2-40"
    model, _ = load_checkpoint(result.path)
    rgb, hha = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, hha), trained(rgb, hha))


def test_ambiguous_or_inconsistent_choices_name_what_to_pass(tmp_path):
    src = acnet_release_file(tmp_path)
    with pytest.raises(ValueError, match=r"release sgnet-r101-nyuv2 is sgnet .* but the file is ACNet"):
        convert(src, tmp_path / "x.safetensors", release="sgnet-r101-nyuv2")
    with pytest.raises(ValueError, match="unknown release 'acnet'; known: sgnet-r101-nyuv2"):
        convert(src, tmp_path / "x.safetensors", release="acnet")
    with pytest.raises(ValueError, match=r"must be a \.safetensors file"):
        convert(src, tmp_path / "x.pth")


# -- strict loading, bad files ------------------------------------------------------------------------------------


def test_strict_loading_names_unused_missing_and_misshapen_tensors(tmp_path):
    shapes = shapes_of("acnet", 37, "resnet18")
    for change, message in (
        (lambda s: s.update({"atten_rgb_9.1.weight": (4,)}),
         r"1 file tensors without a place \['atten_rgb_9.1.weight'\]"),
        (lambda s: s.pop("layer2_m.0.conv1.weight"),
         r"1 model tensors not in the file \['layer2_m.0.conv1.weight'\]"),
        (lambda s: s.update({"conv1_d.weight": (64, 3, 7, 7)}),
         r"conv1_d.weight: file \(64, 3, 7, 7\) vs model \(64, 1, 7, 7\)"),
    ):  # fmt: skip
        broken = dict(shapes)
        change(broken)
        path = tmp_path / "broken.pth"
        torch.save(cheap_state(broken), path)
        with pytest.raises(ValueError, match=message):
            convert(path, tmp_path / "broken.safetensors")
        assert not (tmp_path / "broken.safetensors").exists()


class Gadget:  # pickled by reference: loading it would import and run this module's code
    def __reduce__(self):
        return (print, ("this ran during unpickling",))


def test_bad_files_truncated_pickled_code_and_unknown(tmp_path):
    src = acnet_release_file(tmp_path)
    (tmp_path / "half.pth").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    result = run(rgbd_seg("convert", str(tmp_path / "half.pth"), "-o", str(tmp_path / "h.safetensors")))
    assert result.returncode == EXIT_USAGE and "not a readable torch weights file (truncated" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Gadget()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match=r"pickles Python objects \(builtins.print\).*weights_only=True"):
        convert(tmp_path / "code.pth", tmp_path / "c.safetensors")
    torch.save({"state_dict": Gadget()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"pickles Python objects \(print\)"):  # old files name no module
        convert(tmp_path / "legacy.pth", tmp_path / "c.safetensors")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"state_dict": {"w": 1}}, f)
    with pytest.raises(ValueError, match="not a readable torch weights file"):
        convert(tmp_path / "plain.pkl", tmp_path / "c.safetensors")

    torch.save({"fc.weight": torch.zeros(10, 4)}, tmp_path / "other.pth")
    result = run(rgbd_seg("convert", str(tmp_path / "other.pth"), "-o", str(tmp_path / "o.safetensors")))
    assert result.returncode == EXIT_USAGE
    assert "cannot tell which model this is" in result.stderr and "--model NAME --backbone NAME" in result.stderr
    assert not list(tmp_path.glob("*.safetensors"))


# -- an authors' file where our checkpoint is expected ------------------------------------------------------------


def test_authors_file_where_a_checkpoint_is_expected_names_the_convert_command(tmp_path):
    src = acnet_release_file(tmp_path)
    want = f"rgbd-seg convert {src} -o {tmp_path / 'acnet-r50-nyuv2.safetensors'}"
    with pytest.raises(ValueError, match="authors' ACNet") as info:
        load_checkpoint(src)
    assert want in str(info.value)
    result = run(rgbd_seg("export", str(src), "--onnx", str(tmp_path / "m.onnx")))
    assert result.returncode == EXIT_USAGE and want in result.stderr and "Traceback" not in result.stderr
    # then the suggested command works
    assert run(rgbd_seg(*want.split()[1:])).returncode == 0
    assert json.loads(json.dumps(read_metadata(tmp_path / "acnet-r50-nyuv2.safetensors")))["release"]


def test_plain_weights_get_the_generic_hint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no rgbd_seg_ros metadata; if it is an authors' release, convert it once"):
        load_checkpoint(tmp_path / "plain.safetensors")
    # A .safetensors input: the suggested output is another file, never the input itself.
    assert f"-o {tmp_path / 'plain_converted.safetensors'}`" in convert_command(tmp_path / "plain.safetensors")
    assert f"-o {tmp_path / 'release.safetensors'}`" in convert_command(tmp_path / "release.pth")


# -- ImageNet initialisations (model.pretrained=) -----------------------------------------------------------------


def test_imagenet_layouts_are_identified_and_reported(tmp_path):
    import torchvision

    # torchvision's own ResNet-50 layout (ACNet's start), fc included
    tv = cheap_state({k: tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()})
    assert identify_resnet_layout(tv) == "torchvision ResNet-50"
    torch.save(tv, tmp_path / "resnet50-19c8e357.pth")
    model = build_model("acnet", 40, backbone="resnet50", pretrained=str(tmp_path / "resnet50-19c8e357.pth"))
    reports = pretrained_reports(model)
    assert len(reports) == 3 and all(r.layout == "torchvision ResNet-50" for r in reports)  # rgb, depth, fusion
    assert reports[0].ignored == ["fc.bias", "fc.weight"] and "ignored (fc.*)" in str(reports[0])
    with pytest.raises(ValueError, match="holds a torchvision ResNet-50, but the model has the deep stem"):
        build_model("sgnet", 40, backbone="resnet50", pretrained=str(tmp_path / "resnet50-19c8e357.pth"))

    # TorchSeg's resnet101_v1c.pth (SA-Gate's and SGNet's start): a Sequential deep stem conv1.{0,1,3,4,6} + bn1
    with torch.device("meta"):
        deep = {k: tuple(v.shape) for k, v in ResNet(101, stem="deep").state_dict().items()}
    v1c = {k: v for k, v in deep.items() if k.startswith("layer")}
    for old, new in (("conv1", "conv1.0"), ("bn1", "conv1.1"), ("conv2", "conv1.3"), ("bn2", "conv1.4"),
                     ("conv3", "conv1.6"), ("bn3", "bn1")):  # fmt: skip
        v1c |= {new + k[len(old) :]: v for k, v in deep.items() if k.startswith(old + ".")}
    v1c |= {"fc.weight": (1000, 2048), "fc.bias": (1000,)}
    state = cheap_state(v1c, seed=1)
    path = tmp_path / "resnet101_v1c.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = build_model("sagate", 40, backbone="resnet101", pretrained=str(path))
    (report,) = pretrained_reports(model)
    assert report.layout == "TorchSeg deep-stem (v1c) ResNet-101" and report.ignored == ["fc.bias", "fc.weight"]
    assert report.missing == [] and report.loaded == sum(1 for k in v1c if not k.startswith("fc."))
    assert "copied into the HHA stream" in str(report)
    torch.testing.assert_close(model.backbone.bn3.weight, state["bn1.weight"].expand(128))
    torch.testing.assert_close(model.backbone.hha_conv2.weight, state["conv1.3.weight"])
