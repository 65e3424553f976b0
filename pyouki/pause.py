"""`pause` and `resume`: freeze and thaw every process of a container through its cgroup freezer.

The status `paused` is never stored: `state`/`list` derive it from the freezer (state.Container).
"""

from __future__ import annotations

from pyouki import log
from pyouki.lifecycle import cgroup_manager, load


def pause(root: str, container_id: str) -> None:
    """Freeze a running (or created) container: v1 freezer.state, v2 cgroup.freeze."""
    container = load(root, container_id).lock()
    try:
        container.can_pause()
        cgroup_manager(container, "pause").freeze()
    finally:
        container.unlock()
    log.debug(f"container {container_id} paused")


def resume(root: str, container_id: str) -> None:
    """Thaw a paused container."""
    container = load(root, container_id).lock()
    try:
        status = container.can_resume()
        manager = cgroup_manager(container, "resume")
        # asked of the freezer, not of status(): a paused created container still reports "created"
        if manager.state() != "frozen":
            raise container.not_paused(status)
        manager.thaw()
    finally:
        container.unlock()
    log.debug(f"container {container_id} resumed")
