"""Class names of ``~/labels`` on ``~/label_info``, published once with transient-local durability (latched).

Where ``vision_msgs`` is importable (a ROS 2 install with ``ros-<distro>-vision-msgs``), the message is
``vision_msgs/LabelInfo``, the ROS convention: ``class_map`` holds one ``VisionClass`` (``class_id`` = train id,
``class_name``) per class plus ``unlabeled`` at the label set's void value (255), ``threshold`` 0. Otherwise (the
PyPI rclpy wheels have no vision_msgs) it is a ``std_msgs/String`` on the same topic whose ``data`` is JSON:
``{"label_set": NAME, "class_map": [{"class_id": 0, "class_name": "wall"}, ...], "threshold": 0.0,
"unlabeled": 255}``. :func:`label_info_type` says which one a node publishes.
"""

from __future__ import annotations

import json
from typing import Any

from rgbd_seg_ros.labels import LabelSet

__all__ = ["LABEL_INFO_QOS_DEPTH", "UNLABELED_NAME", "class_map", "label_info_message", "label_info_type"]

LABEL_INFO_QOS_DEPTH = 1
UNLABELED_NAME = "unlabeled"


def class_map(label_set: LabelSet) -> list[tuple[int, str]]:
    """``(class_id, class_name)`` of every class, then ``(ignore_index, "unlabeled")``."""
    return [*enumerate(label_set.class_names), (int(label_set.ignore_index), UNLABELED_NAME)]


def label_info_type() -> tuple[Any, str]:
    """``(message class, "vision_msgs/LabelInfo" | "std_msgs/String")``: LabelInfo where vision_msgs is importable."""
    try:
        from vision_msgs.msg import LabelInfo
    except ImportError:
        from std_msgs.msg import String

        return String, "std_msgs/String"
    return LabelInfo, "vision_msgs/LabelInfo"


def label_info_message(label_set: LabelSet, header: Any, msg_type: Any = None) -> Any:
    """The ``~/label_info`` message of ``label_set`` (``msg_type`` from :func:`label_info_type` by default)."""
    if msg_type is None:
        msg_type = label_info_type()[0]
    entries = class_map(label_set)
    if hasattr(msg_type, "get_fields_and_field_types") and "class_map" in msg_type.get_fields_and_field_types():
        from vision_msgs.msg import VisionClass

        return msg_type(
            header=header,
            class_map=[VisionClass(class_id=i, class_name=n) for i, n in entries],
            threshold=0.0,
        )
    payload = {
        "label_set": label_set.name,
        "class_map": [{"class_id": i, "class_name": n} for i, n in entries],
        "threshold": 0.0,
        "unlabeled": int(label_set.ignore_index),
    }
    return msg_type(data=json.dumps(payload))
