"""``seg.launch.py`` under ROS 2's real ``launch``: a node that dies at start-up makes the launch return non-zero.

Runs where ROS 2's ``launch`` and ``launch_ros`` are installed and this package is built into an ament index
(``colcon build`` + ``colcon test``); elsewhere (the PyPI rclpy wheels have neither) it is skipped with the reason.
The launch file's own logic is tested without ROS 2 in ``test_node_params.py`` / ``test_lifecycle.py``.
"""

import os

import pytest

SKIP_REASON = None
try:
    import launch_ros  # noqa: F401 - seg.launch.py needs it
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription, LaunchService
except ImportError as exc:
    SKIP_REASON = (
        f"launch/launch_ros not installed ({exc.name}): they ship with ROS 2, not with the PyPI rclpy wheels; "
        "run in a sourced ROS 2 workspace with colcon test"
    )
else:
    try:
        SHARE = get_package_share_directory("rgbd_seg_ros")
    except PackageNotFoundError:
        SKIP_REASON = "rgbd_seg_ros is not installed in an ament index: colcon build the workspace and source it"

pytestmark = [pytest.mark.ros, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]


def _launch(**arguments: str) -> int:
    domain = str(10 + (os.getpid() * 7 + 35) % 90)
    seg = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "seg.launch.py")),
        launch_arguments={"device": "cpu", "use_rviz": "false", **arguments}.items(),
    )
    service = LaunchService()
    service.include_launch_description(
        LaunchDescription(
            [
                SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
                SetEnvironmentVariable("ROS_LOCALHOST_ONLY", "1"),
                SetEnvironmentVariable("ROS_DOMAIN_ID", domain),
                seg,
            ]
        )
    )
    return service.run()


def test_a_fatal_start_up_error_makes_the_launch_exit_non_zero(tmp_path):
    assert _launch(checkpoint=str(tmp_path / "missing.safetensors")) != 0


def test_the_bundled_checkpoint_is_installed_where_the_launch_file_defaults_to_it():
    assert os.path.isfile(os.path.join(SHARE, "models", "sgnet_r18_synthetic.safetensors"))
