"""``rgbd-seg segment``: images from disk → label / colour / overlay / confidence PNGs; the README's Python snippet;
the demo's preview panels.

The oracle of every label check is ``Segmenter.from_checkpoint(...)`` run in this process on a frame the test
builds itself from the same files (cv2 + ``depth_to_metres``), never the command's own reader.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from entry_points import (
    EXIT_NOTHING_DONE,
    EXIT_USAGE,
    ROOT,
    assert_clean_failure,
    child_env,
    rgbd_seg,
    run,
    snapshot,
)
from PIL import Image

from rgbd_seg_ros import DEMO_CHECKPOINT, data_path
from rgbd_seg_ros.cli import main
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, depth_to_metres
from rgbd_seg_ros.labels import colorize, get_label_set, overlay
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.segment_files import Calibration, find_pairs, read_camera_info, read_depth, read_frame
from rgbd_seg_ros.synthetic import SceneGenerator

CKPT = data_path(DEMO_CHECKPOINT)
H, W = 60, 80
NAMES = ("a", "b")
RUN = ("--checkpoint", str(CKPT), "--backend", "torch", "--num-threads", "1")


def _k(scene_intrinsics: CameraIntrinsics) -> list[float]:
    k = scene_intrinsics
    return [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]


def calibration_yaml(k: CameraIntrinsics) -> str:
    """camera_info_manager's calibration layout, written by hand."""
    data = ", ".join(repr(v) for v in _k(k))
    return textwrap.dedent(
        f"""\
        image_width: {k.width}
        image_height: {k.height}
        camera_name: test_cam
        camera_matrix:
          rows: 3
          cols: 3
          data: [{data}]
        distortion_model: plumb_bob
        distortion_coefficients:
          rows: 1
          cols: 5
          data: [0, 0, 0, 0, 0]
        """
    )


def echo_yaml(k: CameraIntrinsics) -> str:
    """``ros2 topic echo --once`` of a sensor_msgs/CameraInfo, block lists and the trailing document marker."""
    k_lines = "\n".join(f"- {v!r}" for v in _k(k))
    return (
        "header:\n  stamp:\n    sec: 12\n    nanosec: 5\n  frame_id: camera_color_optical_frame\n"
        f"height: {k.height}\nwidth: {k.width}\ndistortion_model: plumb_bob\nd:\n- 0.0\n- 0.0\n- 0.0\n- 0.0\n- 0.0\n"
        f"k:\n{k_lines}\nr:\n- 1.0\n- 0.0\n- 0.0\n- 0.0\n- 1.0\n- 0.0\n- 0.0\n- 0.0\n- 1.0\n"
        "binning_x: 0\nbinning_y: 0\n---\n"
    )


def depth_mm(depth_m: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(depth_m), np.round(np.nan_to_num(depth_m) * 1000.0), 0).astype(np.uint16)


def write_pair(rgb_path: Path, depth_path: Path, frame: RGBDFrame) -> None:
    rgb_path.parent.mkdir(parents=True, exist_ok=True)
    depth_path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(rgb_path), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    assert cv2.imwrite(str(depth_path), depth_mm(frame.depth))


def frame_from_files(rgb_path: Path, depth_path: Path, k: CameraIntrinsics) -> RGBDFrame:
    rgb = cv2.cvtColor(cv2.imread(str(rgb_path)), cv2.COLOR_BGR2RGB)
    return RGBDFrame(rgb, depth_to_metres(cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)), k)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_checkpoint(CKPT, backend="torch", num_threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """rgb/{a,b}.png + depth/{a,b}.png (16-bit mm), calibration.yaml and echo.yaml."""
    root = tmp_path_factory.mktemp("segment_data")
    gen = SceneGenerator(H, W, seed=11)
    for i, name in enumerate(NAMES):
        write_pair(root / "rgb" / f"{name}.png", root / "depth" / f"{name}.png", gen.sample(i).frame)
    (root / "calibration.yaml").write_text(calibration_yaml(gen.intrinsics))
    (root / "echo.yaml").write_text(echo_yaml(gen.intrinsics))
    return root


def camera() -> CameraIntrinsics:
    """The intrinsics the ``data`` fixture's YAML files hold."""
    return SceneGenerator(H, W, seed=11).intrinsics


def check_outputs(out: Path, name: str, frame: RGBDFrame, segmenter: Segmenter) -> None:
    """The four PNGs of ``name`` against the oracle segmentation of ``frame``."""
    expected = segmenter(frame)
    label_set = segmenter.label_set
    with Image.open(out / "labels" / f"{name}.png") as img:
        assert img.mode == "P"
        labels = np.asarray(img)
        palette = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_array_equal(palette[: label_set.num_classes], label_set.palette)
    np.testing.assert_array_equal(palette[label_set.ignore_index], label_set.void_color)
    color = cv2.cvtColor(cv2.imread(str(out / "color" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(color, colorize(expected.labels, label_set))
    blended = cv2.cvtColor(cv2.imread(str(out / "overlay" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(blended, overlay(frame.rgb, expected.labels, label_set, 0.5))
    confidence = cv2.imread(str(out / "confidence" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert confidence.dtype == np.uint16 and confidence.shape == (H, W)
    np.testing.assert_allclose(confidence / 65535.0, expected.confidence, atol=2e-4)


# -- the command, as a user runs it -------------------------------------------------------------------------------
def test_folders_as_a_subprocess_write_the_segmenters_labels_and_skip_bad_pairs_by_name(data, segmenter, tmp_path):
    rgb_dir, depth_dir = tmp_path / "rgb", tmp_path / "depth"
    for name in NAMES:
        for sub in ("rgb", "depth"):
            (tmp_path / sub).mkdir(exist_ok=True)
            (tmp_path / sub / f"{name}.png").write_bytes((data / sub / f"{name}.png").read_bytes())
    cv2.imwrite(str(rgb_dir / "lonely.png"), np.zeros((H, W, 3), np.uint8))  # no depth partner
    cv2.imwrite(str(rgb_dir / "small.png"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(depth_dir / "small.png"), np.ones((H // 2, W // 2), np.uint16))  # another size
    out = tmp_path / "out"
    args = ["--rgb-dir", str(rgb_dir), "--depth-dir", str(depth_dir), "--camera-info", str(data / "calibration.yaml")]
    result = run(rgbd_seg("segment", *args, *RUN, "--out", str(out)))
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2, text
    assert "lonely" in skipped[0] and "no depth image" in skipped[0]
    assert "small" in skipped[1] and "40x30" in skipped[1] and "80x60" in skipped[1]
    assert "segmented 2 of 4 pairs" in result.stdout
    for name in NAMES:
        frame = frame_from_files(rgb_dir / f"{name}.png", depth_dir / f"{name}.png", camera())
        check_outputs(out, name, frame, segmenter)
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png", "b.png"]


def test_one_pair_in_process_with_a_ros2_topic_echo_camera_info(data, segmenter, tmp_path):
    out = tmp_path / "out"
    rgb, depth = data / "rgb" / "b.png", data / "depth" / "b.png"
    args = ["--rgb", str(rgb), "--depth", str(depth), "--camera-info", str(data / "echo.yaml")]
    assert main(["segment", *args, *RUN, "--out", str(out)]) == 0
    check_outputs(out, "b", frame_from_files(rgb, depth, camera()), segmenter)


def test_existing_outputs_are_kept_unless_overwrite(data, tmp_path):
    out = tmp_path / "out"
    k = camera()
    args = ["--rgb-dir", str(data / "rgb"), "--depth-dir", str(data / "depth"), "--intrinsics"]
    args += [repr(v) for v in (k.fx, k.fy, k.cx, k.cy)]
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "b.png").write_bytes(b"earlier work")
    (out / "labels" / "other.png").write_bytes(b"not ours")
    before = snapshot(out)
    failed = run(rgbd_seg("segment", *args, *RUN, "--out", str(out)))
    assert_clean_failure(failed, str(out / "labels" / "b.png"), EXIT_USAGE)
    assert "--overwrite" in failed.stderr
    assert snapshot(out) == before
    assert main(["segment", *args, *RUN, "--out", str(out), "--overwrite"]) == 0
    with Image.open(out / "labels" / "b.png") as img:
        assert img.mode == "P" and img.size == (W, H)
    assert (out / "labels" / "other.png").read_bytes() == b"not ours"  # not an output of this run


@pytest.fixture
def blocked(tmp_path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path


@pytest.mark.parametrize(
    ("case", "culprit"),
    [
        ("no intrinsics", "--camera-info"),
        ("bad camera info", "bad.yaml"),
        ("out below a file", "--out"),
        ("missing rgb", "--rgb"),
        ("both modes", "--rgb-dir"),
        ("missing checkpoint", "--checkpoint"),
        ("bad intrinsics", "--intrinsics"),
        ("bad overlay alpha", "--overlay-alpha"),
    ],
)
def test_bad_command_lines_fail_in_one_line_before_the_model_loads(data, blocked, case, culprit):
    rgb, depth = data / "rgb" / "a.png", data / "depth" / "a.png"
    (blocked / "bad.yaml").write_text("header: {frame_id: cam}\nheight: 60\nwidth: 80\n")
    pair = ["--rgb", str(rgb), "--depth", str(depth)]
    camera = ["--camera-info", str(data / "calibration.yaml")]
    out = ["--out", str(blocked / "out")]
    args = {
        "no intrinsics": [*pair, *RUN, *out],
        "bad camera info": [*pair, "--camera-info", str(blocked / "bad.yaml"), *RUN, *out],
        "out below a file": [*pair, *camera, *RUN, "--out", str(blocked / "a_file" / "out")],
        "missing rgb": ["--rgb", str(blocked / "nope.png"), "--depth", str(depth), *camera, *RUN, *out],
        "both modes": [*pair, "--rgb-dir", str(data / "rgb"), *camera, *RUN, *out],
        "missing checkpoint": [*pair, *camera, "--checkpoint", str(blocked / "nope.safetensors"), *out],
        "bad intrinsics": [*pair, "--intrinsics", "0", "500", "40", "30", *RUN, *out],
        "bad overlay alpha": [*pair, *camera, "--overlay-alpha", "1.5", *RUN, *out],
    }[case]
    before = snapshot(blocked)
    line = assert_clean_failure(run(rgbd_seg("segment", *args)), culprit, EXIT_USAGE)
    if case == "no intrinsics":
        assert "--intrinsics" in line
    assert snapshot(blocked) == before and not (blocked / "out").exists()


def test_nothing_segmented_exits_3_naming_every_pair(data, tmp_path):
    rgb_dir, depth_dir = tmp_path / "rgb", tmp_path / "depth"
    rgb_dir.mkdir()
    depth_dir.mkdir()
    (rgb_dir / "garbled.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRjunk")  # OpenCV logs an [ERROR] for it
    cv2.imwrite(str(depth_dir / "garbled.png"), np.ones((H, W), np.uint16))
    cv2.imwrite(str(rgb_dir / "eightbit.png"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(depth_dir / "eightbit.png"), np.ones((H, W), np.uint8))  # 8-bit depth: wrong dtype
    (depth_dir / "orphan.npy").write_bytes(b"")
    out = tmp_path / "out"
    args = ["--rgb-dir", str(rgb_dir), "--depth-dir", str(depth_dir), "--camera-info", str(data / "echo.yaml")]
    result = run(rgbd_seg("segment", *args, *RUN, "--out", str(out)))
    assert_clean_failure(result, "eightbit", EXIT_NOTHING_DONE)
    for name, reason in (("garbled", "garbled.png"), ("eightbit", "uint8"), ("orphan", "no colour image")):
        assert any(line.startswith(f"skipped {name}:") and reason in line for line in result.stderr.splitlines()), (
            result.stderr
        )
    assert not any((out / "labels").iterdir())


def test_an_empty_folder_is_nothing_done(data, tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    args = ["--rgb-dir", str(tmp_path / "rgb"), "--depth-dir", str(tmp_path / "depth")]
    args += ["--intrinsics", "1", "1", "0", "0"]
    result = run(rgbd_seg("segment", *args, *RUN, "--out", str(tmp_path / "out")))
    assert_clean_failure(result, str(tmp_path / "rgb"), EXIT_NOTHING_DONE)
    assert not (tmp_path / "out").exists()


# -- the pieces ---------------------------------------------------------------------------------------------------
def test_both_camera_info_layouts_and_ros1_give_the_written_intrinsics(data, tmp_path):
    k = camera()
    (tmp_path / "ros1.yaml").write_text(echo_yaml(k).replace("\nk:\n", "\nK:\n"))
    for path in (data / "calibration.yaml", data / "echo.yaml", tmp_path / "ros1.yaml"):
        assert read_camera_info(path).for_image(W, H) == k, path


def test_calibration_is_scaled_to_the_image_with_one_warning_and_refused_for_another_aspect(data, tmp_path, caplog):
    big = CameraIntrinsics.nyu_kinect(2 * W, 2 * H)
    (tmp_path / "big.yaml").write_text(calibration_yaml(big))
    calib = read_camera_info(tmp_path / "big.yaml")
    rgb, depth = data / "rgb" / "a.png", data / "depth" / "a.png"
    with caplog.at_level("WARNING", logger="rgbd_seg_ros"):
        frames = [read_frame(rgb, depth, calib) for _ in range(2)]
    assert frames[0].intrinsics == big.scaled(W, H)
    assert frames[0].intrinsics.fx == pytest.approx(big.fx / 2)
    scaling = [r for r in caplog.records if "scaling" in r.getMessage()]
    assert len(scaling) == 1 and "160x120" in scaling[0].getMessage() and "80x60" in scaling[0].getMessage()
    (tmp_path / "wide.yaml").write_text(calibration_yaml(CameraIntrinsics(100, 100, 80, 30, 160, 60)))
    with pytest.raises(ValueError, match=r"wide\.yaml.*aspect"):
        read_frame(rgb, depth, read_camera_info(tmp_path / "wide.yaml"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2", "not valid YAML"),
        ("width: 80\nheight: 60\n", "neither camera_matrix"),
        ("width: 80\nheight: 60\nk: [1, 0, 0]\n", "9 numbers"),
        ("k: [500, 0, 40, 0, 500, 30, 0, 0, 1]\n", "no width or height"),
        ("width: 80\nheight: 60\nk: [0, 0, 40, 0, 0, 30, 0, 0, 1]\n", "uncalibrated"),
    ],
)
def test_bad_camera_info_names_the_file(tmp_path, text, match):
    path = tmp_path / "cam.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        read_camera_info(path)
    assert str(path) in str(info.value)


def test_depth_units_by_format_and_depth_scale(tmp_path):
    metres = np.array([[0.5, 1.25], [np.nan, 3.0]], np.float32)
    mm = depth_mm(metres)
    cv2.imwrite(str(tmp_path / "d.png"), mm)
    np.save(tmp_path / "d.npy", metres)
    cv2.imwrite(str(tmp_path / "d.tiff"), metres)
    for name in ("d.png", "d.npy", "d.tiff"):
        np.testing.assert_allclose(read_depth(tmp_path / name), metres, atol=5e-4, err_msg=name)
    scaled = read_depth(tmp_path / "d.png", depth_scale=0.0002)
    np.testing.assert_allclose(scaled, np.where(mm > 0, mm * 0.0002, np.nan), rtol=1e-6)
    cv2.imwrite(str(tmp_path / "d3.png"), np.zeros((2, 2, 3), np.uint16))
    with pytest.raises(ValueError, match=r"d3\.png.*one channel"):
        read_depth(tmp_path / "d3.png")


def test_metres_in_a_16_bit_png_warn_about_the_depth_scale(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "depth.png"), np.full((4, 4), 3, np.uint16))  # "3" = metres written as integers
    frame = read_frame(tmp_path / "rgb.png", tmp_path / "depth.png", Calibration(4.0, 4.0, 1.5, 1.5))
    warning = next(iter(frame.meta.values()))
    assert "depth.png" in warning and "--depth-scale" in warning


def test_pairs_match_by_stem_and_ambiguous_names_are_reported(tmp_path):
    for sub, names in (("rgb", ("x.png", "y.jpg", "z.png", "z.jpg")), ("depth", ("x.png", "y.npy", "z.png"))):
        (tmp_path / sub).mkdir()
        for n in names:
            (tmp_path / sub / n).write_bytes(b"")
    pairs, bad = find_pairs(tmp_path / "rgb", tmp_path / "depth")
    assert [(p.name, p.rgb.name, p.depth.name) for p in pairs] == [("x", "x.png", "x.png"), ("y", "y.jpg", "y.npy")]
    assert [name for name, _ in bad] == ["z"] and "z.jpg" in bad[0][1]


# -- README and demo ----------------------------------------------------------------------------------------------
def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    quick_start = text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start") + 1)]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", quick_start, re.S) if "Segmenter.from_checkpoint" in b]
    assert len(blocks) == 1, "the Quick start section should hold one Python snippet running the Segmenter"
    return blocks[0]


def test_the_readme_python_snippet_runs_as_written(tmp_path, segmenter):
    frames = tmp_path / "out" / "demo" / "frames"
    scene = SceneGenerator(480, 640, seed=0).sample(0)  # the demo's first frame
    write_pair(frames / "rgb" / "000.png", frames / "depth" / "000.png", scene.frame)
    proc = subprocess.run(
        [sys.executable, "-c", readme_snippet()], cwd=tmp_path, capture_output=True, text=True, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("(480, 640) "), proc.stdout
    label_set = get_label_set("synthetic")
    assert proc.stdout.split(" ", 2)[2].rsplit(" ", 2)[0] in label_set.class_names


def test_demo_previews_show_ground_truth_and_prediction_and_its_frames_segment(tmp_path, monkeypatch, segmenter):
    import rgbd_seg_ros.cli as cli

    loads = []
    real = cli._demo_segmenter

    def counting(*args):
        loads.append(args)
        return real(*args)

    monkeypatch.setattr(cli, "_demo_segmenter", counting)
    out = tmp_path / "demo"
    size = ["--frames", "2", "--size", "48x64", "--replay-frames", "1", "--replay-size", "48x64"]
    assert main(["demo", "--out", str(out), *size]) == 0
    assert len(loads) == 1  # one model for the previews and the replay
    preview = cv2.cvtColor(cv2.imread(str(out / "preview_001.png")), cv2.COLOR_BGR2RGB)
    assert preview.shape == (48, 4 * 64, 3)
    scene = SceneGenerator(48, 64, seed=0).sample(1)
    panels = np.split(preview, 4, axis=1)
    body = np.s_[20:, :]  # below the titles
    np.testing.assert_array_equal(panels[0][body], scene.frame.rgb[body])
    truth_set = get_label_set("synthetic")
    np.testing.assert_array_equal(panels[2][body], colorize(truth_set.to_train_ids(scene.labels), truth_set)[body])
    demo_model = Segmenter.from_checkpoint(CKPT)  # the demo's own (default) options
    predicted = colorize(demo_model(scene.frame).labels, demo_model.label_set)
    np.testing.assert_array_equal(panels[3][body], predicted[body])
    assert not np.array_equal(panels[2][body], panels[3][body])  # the prediction is not the ground truth again
    for panel, raw in ((panels[2], colorize(truth_set.to_train_ids(scene.labels), truth_set)), (panels[3], predicted)):
        assert (panel[:8, :40] != raw[:8, :40]).any()  # a title is drawn on it
    # The frames the demo wrote are a segment command's input as they are.
    frames = out / "frames"
    args = ["--rgb-dir", str(frames / "rgb"), "--depth-dir", str(frames / "depth")]
    seg_out = tmp_path / "seg"
    cmd = ["segment", *args, "--camera-info", str(frames / "camera_info.yaml"), *RUN, "--out", str(seg_out)]
    assert main(cmd) == 0
    frame = frame_from_files(frames / "rgb" / "001.png", frames / "depth" / "001.png", scene.frame.intrinsics)
    with Image.open(seg_out / "labels" / "001.png") as img:
        np.testing.assert_array_equal(np.asarray(img), segmenter(frame).labels)
