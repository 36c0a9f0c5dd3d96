"""config/fastdds_large_images.xml: camera-sized images published best effort at 30 Hz arrive whole.

With Fast DDS's defaults (0.5 MB shared-memory segment) most 640×480 rgb8 frames sent best effort from another
process are lost (here ~93 %, see benchmarks/node_load.py); the profile, given to the publishing process, is what
seg.launch.py and the README hand to the camera side.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 rclpy wheels (pip install '.[ros]')")
from rclpy.qos import qos_profile_sensor_data
from ros_harness import RosHarness, domain_id
from sensor_msgs.msg import Image

pytestmark = pytest.mark.serial  # delivery under load: .ci/run runs it alone
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"
FRAMES = 60

PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from rgbd_seg_ros.ros.convert import image_from_array

namespace, frames = sys.argv[1], int(sys.argv[2])
rclpy.init()
node = rclpy.create_node("camera", namespace=namespace)
pub = node.create_publisher(Image, "color/image", qos_profile_sensor_data)
deadline = time.monotonic() + 30
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # let the match settle on both sides
for i in range(frames):
    msg = image_from_array(np.full((480, 640, 3), i, np.uint8), "rgb8")
    msg.header.frame_id = str(i)
    pub.publish(msg)
    time.sleep(1 / 30)
time.sleep(0.5)
node.destroy_node()
rclpy.shutdown()
"""


def test_best_effort_vga_images_arrive_whole_with_the_profile():
    domain = domain_id(7)
    harness = RosHarness(domain)
    received: dict[int, bool] = {}

    def on_image(msg: Image) -> None:
        data = np.frombuffer(msg.data, np.uint8)
        i = int(msg.header.frame_id)
        received[i] = msg.width == 640 and msg.height == 480 and data.size == 640 * 480 * 3 and bool((data == i).all())

    harness.io.create_subscription(Image, "color/image", on_image, qos_profile_sensor_data)
    # Fast DDS 3 (Kilted) reads FASTDDS_..., Fast DDS 2 (Jazzy, Humble) only FASTRTPS_...: both, as seg.launch.py.
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    env.update(FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE), FASTRTPS_DEFAULT_PROFILES_FILE=str(PROFILE))
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PUBLISHER, harness.namespace, str(FRAMES)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        time.sleep(0.3)
    finally:
        harness.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(received.values()), "a frame arrived corrupted"
    assert len(received) >= 0.9 * FRAMES, f"only {len(received)} of {FRAMES} best-effort frames arrived"
