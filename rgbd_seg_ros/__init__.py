"""Real-time RGB-D semantic segmentation for ROS 2."""

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"

#: The demo checkpoint shipped in ``rgbd_seg_ros/data/`` (SGNet-R18 trained on the synthetic rooms only).
DEMO_CHECKPOINT = "sgnet_r18_synthetic.safetensors"


def data_path(name: str = "") -> Path:
    """The path of a file shipped in the package's ``data/`` folder (the folder itself for ``""``), e.g.
    ``data_path(DEMO_CHECKPOINT)``. ``FileNotFoundError`` names the folder when the file is not there."""
    folder = Path(str(files(__name__).joinpath("data")))
    path = folder / name if name else folder
    if not path.exists():
        raise FileNotFoundError(f"{name!r} is not among the package's data files in {folder}")
    return path
