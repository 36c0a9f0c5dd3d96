"""``rgbd_seg_lifecycle_node``: the segmentation node as a managed (lifecycle) node.

The same node as :mod:`rgbd_seg_ros.ros.node` (parameters, topics, worker, outputs), driven by the lifecycle
transitions (``ros2 lifecycle set /rgbd_seg configure`` …, or ``seg.launch.py managed:=true``):

* created (``unconfigured``): parameters declared and validated; a bad value stops the process as the plain node.
* ``configure``: loads and warms up the model, creates the publishers and latches ``~/label_info``. A failure
  (missing checkpoint, mismatching model, missing Python package) is logged with its reason and the node stays
  ``unconfigured``; fix the parameter (``ros2 param set``) and configure again.
* ``activate``: subscribes to the inputs, starts the worker and the diagnostics/watchdog timers: outputs flow.
* ``deactivate``: destroys the subscriptions and timers and stops the worker after the frame in progress; the
  model stays loaded, so ``activate`` is immediate.
* ``cleanup``: destroys the publishers and frees the model (and CUDA's cached memory). ``shutdown`` does what is
  needed of the above.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from rgbd_seg_ros.ros.node import (
    NODE_NAME,
    SegmentationNode,
    SegmenterFactory,
    StartupError,
    missing_dependency,
    run,
)

__all__ = ["ManagedSegmentationNode", "main"]


class ManagedSegmentationNode(SegmentationNode, LifecycleNode):
    """:class:`~rgbd_seg_ros.ros.node.SegmentationNode` whose set-up follows the lifecycle transitions.

    Attributes:
        configure_error: why the last ``configure`` failed ("" after a successful one).
    """

    def __init__(
        self, segmenter_factory: SegmenterFactory | None = None, node_name: str = NODE_NAME, **kwargs: Any
    ) -> None:
        self.configure_error = ""
        self.segmenter: Any = None
        self._activated: tuple[list[Any], list[Any]] = ([], [])
        super().__init__(segmenter_factory, node_name, **kwargs)

    def _setup(self, factory: SegmenterFactory) -> None:
        self._factory = factory
        self._declare()
        self._log.info("unconfigured: configure loads the model, activate starts segmenting")

    # -- transitions (service callbacks on the executor) -------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure(self._factory)
        except (StartupError, ImportError) as exc:
            self.configure_error = missing_dependency(exc) if isinstance(exc, ImportError) else str(exc)
            self._log.error(f"configure failed, staying unconfigured: {self.configure_error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._log.info("deactivated: model kept loaded; activate resumes")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._log.info("cleaned up: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _deactivate(self) -> None:
        """Undo :meth:`_activate`: subscriptions and timers destroyed, worker stopped (the model stays)."""
        subscriptions, timers = self._activated
        self._activated = ([], [])
        for subscription in subscriptions:
            self.destroy_subscription(subscription)
        for timer in timers:
            self.destroy_timer(timer)
        self._stop_worker()
        self._worker = None

    def _release(self) -> None:
        """Undo :meth:`_configure`: publishers destroyed, the model freed."""
        publishers = [*getattr(self, "output_publishers", {}).values()]
        publishers += [getattr(self, name, None) for name in ("_diag_pub", "_points_pub", "_label_info_pub")]
        for publisher in filter(None, publishers):
            self.destroy_publisher(publisher)
        self.output_publishers = {}
        self._diag_pub = self._points_pub = self._label_info_pub = None
        self.segmenter = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(args: list[str] | None = None) -> int:
    """Console script ``rgbd_seg_lifecycle_node``: a managed node, ``unconfigured`` until a transition arrives."""
    return run(ManagedSegmentationNode, args)


if __name__ == "__main__":
    sys.exit(main())
