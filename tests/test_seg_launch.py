"""launch_testing: ``seg.launch.py`` starts rgbd_seg_node with a random-weight SGNet checkpoint; the test publishes
synthetic colour/depth/CameraInfo on the camera namespace it passes and checks the four outputs.

Runs where ROS 2's ``launch_testing`` and ``launch_ros`` are installed and this package is built into an ament
index (``colcon build``; ``colcon test`` or ``launch_test tests/test_seg_launch.py``). Elsewhere (e.g. the PyPI
rclpy wheels, which have neither) it is skipped with the reason. The skip is a plain skipped test rather than a
module-level skip, because launch_testing's pytest plugin imports test modules outside pytest's skip handling.
"""

import os
import tempfile
import time
import unittest

import pytest

SKIP_REASON = None
try:
    import launch_ros  # noqa: F401 - seg.launch.py needs it
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable, TimerAction
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription
except ImportError as exc:
    SKIP_REASON = (
        f"launch_testing/launch_ros not installed ({exc.name}): they ship with ROS 2, not with the PyPI rclpy "
        "wheels; run in a sourced ROS 2 workspace with colcon test"
    )
else:
    try:
        SHARE = get_package_share_directory("rgbd_seg_ros")
    except PackageNotFoundError:
        SKIP_REASON = "rgbd_seg_ros is not installed in an ament index: colcon build the workspace and source it"

DOMAIN = 10 + (os.getpid() * 7 + 6) % 90
CAMERA_NS = "/launch_test_cam"
OUTPUTS = (("labels", "mono8"), ("color", "rgb8"), ("overlay", "rgb8"), ("confidence", "32FC1"))


if SKIP_REASON is not None:

    @pytest.mark.skip(reason=SKIP_REASON)
    def test_seg_launch():
        """Placeholder reporting why the launch test cannot run here."""

else:

    @pytest.mark.launch_test
    def generate_test_description():
        from rgbd_seg_ros.models import build_model
        from rgbd_seg_ros.models.checkpoints import save_checkpoint

        checkpoint = save_checkpoint(
            build_model("sgnet", 40, backbone="resnet18"),
            os.path.join(tempfile.mkdtemp(prefix="rgbd_seg_launch_"), "sgnet_r18"),
            {"label_set": "nyuv2-40"},
        )
        seg = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "seg.launch.py")),
            launch_arguments={
                "checkpoint": str(checkpoint),
                "device": "cpu",
                "camera": "generic",
                "camera_namespace": CAMERA_NS,
                "use_rviz": "false",
            }.items(),
        )
        return LaunchDescription(
            [
                SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
                SetEnvironmentVariable("ROS_LOCALHOST_ONLY", "1"),
                SetEnvironmentVariable("ROS_DOMAIN_ID", str(DOMAIN)),
                seg,
                TimerAction(period=2.0, actions=[launch_testing.actions.ReadyToTest()]),
            ]
        )

    class TestSegLaunch(unittest.TestCase):
        """Active test: outputs arrive with the colour header, encodings and sizes."""

        @classmethod
        def setUpClass(cls):
            import rclpy
            from rclpy.executors import SingleThreadedExecutor

            cls.context = rclpy.Context()
            rclpy.init(context=cls.context, domain_id=DOMAIN)
            cls.node = rclpy.create_node("seg_launch_test", context=cls.context)
            cls.executor = SingleThreadedExecutor(context=cls.context)
            cls.executor.add_node(cls.node)

        @classmethod
        def tearDownClass(cls):
            import rclpy

            cls.executor.shutdown()
            cls.node.destroy_node()
            rclpy.try_shutdown(context=cls.context)

        def test_outputs_arrive_with_the_colour_header(self):
            import numpy as np
            from rclpy.qos import qos_profile_sensor_data
            from sensor_msgs.msg import CameraInfo, Image

            from rgbd_seg_ros.ros.convert import image_from_array
            from rgbd_seg_ros.synthetic import SceneGenerator

            received = {name: [] for name, _ in OUTPUTS}
            for name, _ in OUTPUTS:
                self.node.create_subscription(Image, f"/rgbd_seg/{name}", received[name].append, 10)
            pubs = [
                self.node.create_publisher(t, f"{CAMERA_NS}/{topic}", qos_profile_sensor_data)
                for t, topic in ((Image, "color/image"), (Image, "depth/image"), (CameraInfo, "depth/camera_info"))
            ]
            frame = SceneGenerator(60, 80, seed=0).sample(0).frame
            k = frame.intrinsics
            color = image_from_array(frame.rgb, "rgb8")
            depth = image_from_array(np.nan_to_num(frame.depth * 1000, nan=0).astype(np.uint16), "16UC1")
            info = CameraInfo(width=k.width, height=k.height, k=[k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0])
            sent, deadline = [], time.monotonic() + 60.0
            while not all(received.values()) and time.monotonic() < deadline:
                t = time.time_ns()
                sent.append(t)
                for msg, stamp in ((color, t), (depth, t + 3_000_000), (info, t + 3_000_000)):
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                    msg.header.frame_id = "camera_color_optical_frame"
                for pub, msg in zip(pubs, (color, depth, info)):
                    pub.publish(msg)
                end = time.monotonic() + 0.1
                while time.monotonic() < end:
                    self.executor.spin_once(timeout_sec=0.02)
            for name, encoding in OUTPUTS:
                self.assertTrue(received[name], f"nothing on /rgbd_seg/{name}")
                msg = received[name][0]
                self.assertEqual((msg.encoding, msg.width, msg.height), (encoding, 80, 60))
                self.assertEqual(msg.header.frame_id, "camera_color_optical_frame")
                self.assertIn(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, sent)

    @launch_testing.post_shutdown_test()
    class TestSegLaunchShutdown(unittest.TestCase):
        def test_node_exits_cleanly(self, proc_info):
            launch_testing.asserts.assertExitCodes(proc_info)
