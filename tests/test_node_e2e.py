"""The node end to end with a real (random-weight) SGNet-ResNet-18 checkpoint and the real rclpy wheels.

Frames are small (60×80 synthetic scenes) so CPU inference stays fast.
"""

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")

from ros_harness import RosHarness, domain_id, info_msg, stamp_ns, wait_for, wait_matched
from sensor_msgs.msg import CameraInfo, Image

from rgbd_seg_ros.frames import RGBDFrame, depth_to_metres
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.checkpoints import save_checkpoint
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.ros.convert import image_from_array, image_to_array
from rgbd_seg_ros.ros.node import StartupError, main
from rgbd_seg_ros.synthetic import SceneGenerator

T0 = 1_700_000_000_000_000_000
OUTPUTS = ("labels", "color", "overlay", "confidence")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model = build_model("sgnet", 40, backbone="resnet18")
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "sgnet_r18", {"label_set": "nyuv2-40"})


@pytest.fixture(scope="module")
def scene():
    frame = SceneGenerator(60, 80, seed=3).sample(0).frame
    mm = np.nan_to_num(np.round(frame.depth * 1000.0), nan=0.0).astype(np.uint16)
    return frame, mm


@pytest.fixture
def ros():
    harness = RosHarness(domain_id(4))
    yield harness
    harness.shutdown()


def _stamp(msg, t_ns, frame_id):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def _send(ros, frame, depth, encoding, t_ns):
    pubs = getattr(ros, "_e2e_pubs", None)
    if pubs is None:
        pubs = ros._e2e_pubs = (
            ros.publisher(Image, "color/image"),
            ros.publisher(Image, "depth/image"),
            ros.publisher(CameraInfo, "depth/camera_info"),
        )
        wait_matched(*pubs)
    color, depth_pub, info = pubs
    color.publish(_stamp(image_from_array(frame.rgb, "rgb8"), t_ns, "camera_color_optical_frame"))
    depth_pub.publish(_stamp(image_from_array(depth, encoding), t_ns + 4_000_000, "camera_depth_optical_frame"))
    info.publish(info_msg(frame.intrinsics, t_ns + 4_000_000, "camera_depth_optical_frame"))


def test_real_checkpoint_outputs_match_the_library_segmenter(ros, checkpoint, scene):
    frame, mm = scene
    node = ros.start_node(None, checkpoint=str(checkpoint), device="cpu")
    out = {name: ros.collect(Image, f"rgbd_seg/{name}") for name in OUTPUTS}
    wait_matched(*node.output_publishers.values())
    _send(ros, frame, mm, "16UC1", T0)
    assert wait_for(lambda: all(out.values()), timeout=30)
    for name, encoding in zip(OUTPUTS, ("mono8", "rgb8", "rgb8", "32FC1")):
        msg = out[name][0]
        assert (msg.encoding, msg.width, msg.height) == (encoding, 80, 60)
        assert stamp_ns(msg) == T0 and msg.header.frame_id == "camera_color_optical_frame"
    labels = image_to_array(out["labels"][0])
    confidence = image_to_array(out["confidence"][0])
    assert labels.max() < 40 and 0.0 < confidence.min() and confidence.max() <= 1.0
    # The node's path (messages → RGBDFrame → Segmenter) equals the library's on the same data.
    reference = Segmenter.from_checkpoint(checkpoint, device="cpu")(
        RGBDFrame(frame.rgb, depth_to_metres(mm), frame.intrinsics, T0, "camera_color_optical_frame")
    )
    np.testing.assert_array_equal(labels, reference.labels)
    np.testing.assert_allclose(confidence, reference.confidence, rtol=1e-5)


def test_16uc1_and_32fc1_streams_give_the_same_labels(ros, checkpoint, scene):
    frame, mm = scene
    node = ros.start_node(None, checkpoint=str(checkpoint), device="cpu")
    labels = ros.collect(Image, "rgbd_seg/labels")
    wait_matched(node.output_publishers["labels"])
    # The 32FC1 stream carries the metres the 16UC1 one decodes to (REP 118: mm × 0.001), holes as NaN.
    metres = mm.astype(np.float32) * np.float32(0.001)
    metres[mm == 0] = np.nan
    _send(ros, frame, mm, "16UC1", T0)
    assert wait_for(lambda: len(labels) == 1, timeout=30)
    _send(ros, frame, metres, "32FC1", T0 + 33_333_333)
    assert wait_for(lambda: len(labels) == 2, timeout=30)
    np.testing.assert_array_equal(image_to_array(labels[0]), image_to_array(labels[1]))


def test_diagnostics_name_the_model_and_device(ros, checkpoint, scene):
    from diagnostic_msgs.msg import DiagnosticArray

    frame, mm = scene
    node = ros.start_node(None, checkpoint=str(checkpoint), device="cpu", diagnostics_period=0.2, publish_all=True)
    received = ros.collect(DiagnosticArray, "/diagnostics")
    _send(ros, frame, mm, "16UC1", T0)
    name = f"{node.get_fully_qualified_name()}: segmentation"

    def published():
        values = [{kv.key: kv.value for kv in s.values} for m in received for s in m.status if s.name == name]
        return [v for v in values if int(v["published sets"]) >= 1]

    assert wait_for(lambda: published(), timeout=30)
    last = published()[-1]
    assert (last["model"], last["device"], last["label set"]) == ("sgnet", "cpu", "nyuv2-40")


def test_mismatching_model_parameter_stops_start_up_naming_file_and_models(ros, checkpoint):
    with pytest.raises(StartupError) as err:
        ros.start_node(None, checkpoint=str(checkpoint), device="cpu", model="acnet")
    assert str(checkpoint) in str(err.value) and "'sgnet'" in str(err.value) and "'acnet'" in str(err.value)


def test_corrupt_checkpoint_stops_start_up_naming_the_file(ros, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(StartupError, match=r"broken\.safetensors"):
        ros.start_node(None, checkpoint=str(bad), device="cpu")


def test_missing_checkpoint_exits_non_zero_with_one_error_naming_the_file(tmp_path, monkeypatch, capfd):
    missing = tmp_path / "nowhere" / "model.safetensors"
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id(5)))  # main() uses the default context (read at init)
    rc = main(["rgbd_seg_node", "--ros-args", "-p", f"checkpoint:={missing}", "-p", "device:=cpu"])
    text = "".join(capfd.readouterr())
    assert rc == 1
    fatal = [line for line in text.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and str(missing) in fatal[0] and "Traceback" not in text
