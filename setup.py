"""ament_python build of rgbd_seg_ros; the same file makes it pip-installable (``pip install -e .``)."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "rgbd_seg_ros"


def _config_files() -> list[tuple[str, list[str]]]:
    """``config/**`` keeps its sub-folder structure under ``share/rgbd_seg_ros``."""
    entries: dict[str, list[str]] = {}
    for path in sorted(Path("config").rglob("*")):
        if path.is_file():
            entries.setdefault(f"share/{PACKAGE}/{path.parent.as_posix()}", []).append(path.as_posix())
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/*.safetensors", "data/*.json", "data/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        # The bundled checkpoint under share/ too: seg.launch.py's default (`ros2 launch` runs as written).
        (f"share/{PACKAGE}/models", sorted(glob(f"{PACKAGE}/data/*.safetensors") + glob(f"{PACKAGE}/data/*.json"))),
        *_config_files(),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "opencv-python-headless>=4.8,<5",  # OpenCV 5 renumbers types: cv_bridge's cv2_to_imgmsg fails (KeyError)
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "rosbags>=0.11",
        "h5py>=3.9",
        "pillow>=9",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxscript>=0.1",  # torch.onnx's exporter: `rgbd-seg export` and the CPU default backend (ONNX cache)
        # Pinned for x86_64, the platform this package is tested on; on aarch64 (Jetson) install torch from
        # NVIDIA's wheels first (see README), then this package with --no-deps or the matching pins.
        "torch==2.14.1; platform_machine == 'x86_64'",
        "torchvision==0.29.1; platform_machine == 'x86_64'",
        "torch; platform_machine != 'x86_64'",
        "torchvision; platform_machine != 'x86_64'",
    ],
    extras_require={
        # The PyPI rclpy wheels, for users without a ROS 2 install (x86_64 only).
        "ros": [
            "ros-rclpy[fastrtps]; platform_machine == 'x86_64'",
            "ros-sensor-msgs; platform_machine == 'x86_64'",
            "ros-std-msgs; platform_machine == 'x86_64'",
            "ros-diagnostic-msgs; platform_machine == 'x86_64'",
            "ros-lifecycle-msgs; platform_machine == 'x86_64'",
        ],
        "test": [
            "pytest>=8,<9",  # pytest 9 rejects launch_testing's plugin hook (PluginValidationError) in ROS 2 shells
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "torchmetrics>=1.4",
            "tensorboard>=2.14",
        ],
        "train": ["tensorboard>=2.14"],
        "tf": ["tensorflow-cpu>=2.16"],  # rgbd-seg convert of the AdapNet++/SSMA TensorFlow checkpoints only
    },
    zip_safe=False,
    maintainer="rgbd_seg_ros maintainers",
    maintainer_email="maintainers@rgbd-seg-ros.dev",
    description="Real-time RGB-D semantic segmentation for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "rgbd-seg = rgbd_seg_ros.cli:main",
            "rgbd_seg_node = rgbd_seg_ros.ros.node:main",
            "rgbd_seg_lifecycle_node = rgbd_seg_ros.ros.lifecycle_node:main",
        ],
    },
)
