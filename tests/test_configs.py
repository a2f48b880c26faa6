"""Every bundled config loads and instantiates; overrides are typed; bad keys are errors."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from clipheads.core.config import (apply_overrides, configs_root, from_dict, list_configs,
                                   load_config, read_yaml, resolve_config_path)
from clipheads.core.errors import UserError
from clipheads.core.registry import TASKS


def _all_configs():
    return [(task, name) for task, names in list_configs().items() for name in names]


def test_there_are_configs():
    assert _all_configs()


@pytest.mark.parametrize("task, name", _all_configs())
def test_bundled_config_instantiates(task, name):
    path = resolve_config_path(task, name)
    assert read_yaml(path).get("task", task) == task
    cfg = load_config(TASKS.get(task).Config, path)
    data = read_yaml(path)  # what the file sets is what the config holds
    for key, value in data.items():
        if key != "task" and not isinstance(value, dict):
            assert getattr(cfg, key) == value or list(getattr(cfg, key)) == value, key


@dataclass
class Inner:
    lr: float = 0.1
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None


def test_overrides_are_typed():
    data = apply_overrides({}, ["inner.lr=1e-3", "inner.layers=[2,5,8,11]", "steps=7", "maybe=2"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == 0.001 and cfg.inner.layers == [2, 5, 8, 11] and cfg.steps == 7
    assert cfg.maybe == 2.0 and isinstance(cfg.maybe, float)


@pytest.mark.parametrize("override, pattern", [
    ("inner.lrr=1", r"unknown key 'lrr' \(did you mean: lr\?\)"),
    ("steps=1.5", "expected an integer"),
    ("inner.layers=[a]", "expected an integer"),
    ("novalue", "expected KEY=VALUE"),
])
def test_bad_overrides(override, pattern):
    with pytest.raises(UserError, match=pattern):
        from_dict(Outer, apply_overrides({}, [override]))


def test_unknown_config_name_suggests():
    with pytest.raises(UserError, match="not found"):
        resolve_config_path("classify", "zero_sh0t")
    assert configs_root().is_dir()
