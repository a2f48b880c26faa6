"""Task registry: `@register_task(name)` plus discovery through the `clipheads.tasks`
entry-point group, which is how both the built-in heads and third-party plugins arrive
(core never imports a task by name)."""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Callable, TypeVar

from .errors import UserError, close_matches

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "clipheads.tasks"
T = TypeVar("T", bound=type)


class TaskRegistry:
    """Name -> Task class. One instance (`TASKS`) serves the process."""

    def __init__(self, group: str = ENTRY_POINT_GROUP):
        self._tasks: dict[str, type] = {}
        self._origin: dict[str, str] = {}
        self._group = group
        self._discovered = False
        self.failed: dict[str, str] = {}

    def register(self, name: str, cls: type, origin: str = "built-in") -> type:
        from .task import Task
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"task '{name}' must be a subclass of clipheads.core.task.Task")
        existing = self._tasks.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"task name '{name}' is already registered by {existing.__module__}")
        cls.name = name
        self._tasks[name] = cls
        self._origin.setdefault(name, origin)
        return cls

    def discover(self) -> None:
        """Import every entry point of the group once; a broken plugin is reported, not fatal."""
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self._group):
            try:
                obj = ep.load()
            except Exception as exc:  # third-party code: keep the CLI usable
                self.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("task plugin '%s' (%s) failed to load: %s", ep.name, ep.value, exc)
                continue
            origin = "built-in" if ep.value.startswith("clipheads.") else (
                f"plugin {ep.dist.name if ep.dist else ep.value}")
            if isinstance(obj, type):
                self.register(ep.name, obj, origin)
            else:
                self._origin[ep.name] = origin

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._tasks)

    def origin(self, name: str) -> str:
        return self._origin.get(name, "built-in")

    def get(self, name: str) -> type:
        self.discover()
        if name not in self._tasks:
            raise UserError(f"unknown task '{name}'{close_matches(name, self._tasks)}; "
                            "'clipheads list' shows the installed tasks")
        return self._tasks[name]


TASKS = TaskRegistry()


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: `@register_task("lseg") class LSeg(Task): ...`."""
    def wrap(cls: T) -> T:
        return TASKS.register(name, cls)
    return wrap
