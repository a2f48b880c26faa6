"""Typed configs: dataclasses are the schema, YAML files fill them, `--set a.b=c` overrides.

Unknown keys are errors with a suggestion; values are coerced to the field's type (so
`--set train.lr=1e-3` is a float and `--set layers=[2,5,8,11]` a list of ints). A field
declares its allowed values with `checked(default, ge=..., choices=..., ...)`; every
resolved config is checked before anything is built, and a bad value is one line naming
the key, the value, the rule and where the value came from (file, --set, default).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from .atomic import atomic_write_text
from .errors import UserError, close_matches, first_line

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Check:
    """The allowed values of one config field (None = no rule). Numbers: `ge`/`gt`/`le`/`lt`;
    lists and strings: `min_len`/`max_len`/`length`; `choices`; `each` applies to list items."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    length: int | None = None
    min_len: int | None = None
    each: "Check | None" = None

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks the rule, or None (None values pass: optional fields)."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:
                return "must be a number, not NaN"
            inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                      and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
            if not inside:
                return f"must be {self._range()}"
        if isinstance(value, (list, tuple, str)):
            if self.length is not None and len(value) != self.length:
                return f"must have exactly {self.length} entries"
            if self.min_len is not None and len(value) < self.min_len:
                return f"must have at least {self.min_len} entr{'y' if self.min_len == 1 else 'ies'}"
            if self.each is not None and not isinstance(value, str):
                for i, item in enumerate(value):
                    why = self.each.problem(item)
                    if why:
                        return f"entry {i} ({item!r}) {why}"
        return None

    def _range(self) -> str:
        parts = [f"{op} {b:g}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if b is not None]
        return " and ".join(parts)


def checked(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            **rules: Any) -> Any:
    """A dataclass field with allowed values, e.g. `top_k: int = checked(5, ge=1)`."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"check": Check(**rules)})


@dataclasses.dataclass
class Provenance:
    """What a reproduction config reproduces, what it should reach, and what differs."""

    paper: str = ""
    expected: dict[str, float] = dataclasses.field(default_factory=dict)
    fidelity: str = ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys are errors with suggestions."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"{where}: unknown key '{key}'{close_matches(key, names)}; "
                            f"valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b=c` strings to a nested dict; values are parsed as YAML (typed)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.001")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: '{part}' is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({first_line(exc)}); "
                            "quote it, e.g. --set 'key=[1, 2]'") from exc
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def configs_root() -> Path:
    return Path(str(resources.files("clipheads.configs")))


def list_configs() -> dict[str, list[str]]:
    """task -> names of its bundled YAML configs."""
    root = configs_root()
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("_")}


def resolve_config_path(task: str, name_or_path: str) -> Path:
    """A file path, or the name of a bundled config of `task` (`tiny_world`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    bundled = configs_root() / task / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if bundled.is_file():
        return bundled
    names = list_configs().get(task, [])
    raise UserError(f"config '{name_or_path}' not found as a file or as a bundled {task} config"
                    f"{close_matches(name_or_path, names)}; bundled: {', '.join(names) or 'none'}")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config {path}: {first_line(exc)}; pass a YAML text file") from exc
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping at the top level")
    return data


def load_config(cls: type[T], path: Path | None = None, overrides: Sequence[str] = (),
                base: dict[str, Any] | None = None) -> T:
    """Defaults <- YAML file <- `base` (CLI options) <- overrides, validated into `cls`.
    Mappings merge key by key (so `--set model.vision_cfg.layers=2` keeps the rest of a
    dict-valued default); lists and scalars replace."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        data.pop("task", None)
    if base:
        data = _merge(data, base)
    data = apply_overrides(data, overrides)
    where = str(path) if path else "config"
    from_dict(cls, data, where=where)  # unknown keys are reported against the user's input
    cfg = from_dict(cls, _merge(to_dict(cls()), data), where=where)
    sources = _sources(path, base or {}, overrides)
    check_config(cfg, lambda key: sources.get(key, "default"))
    return cfg


def _sources(path: Path | None, base: dict[str, Any], overrides: Sequence[str]) -> dict[str, str]:
    """Dotted key -> where its value came from (the last writer wins, as in load_config)."""
    out: dict[str, str] = {}
    if path is not None:
        data = read_yaml(path)
        out.update({k: f"config {path}" for k in _dotted(data)})
    out.update({k: f"--{k}" for k in _dotted(base)})
    for item in overrides:
        key = item.partition("=")[0].strip()
        out.update({k: "--set" for k in list(out) if k.startswith(key + ".")})
        out[key] = "--set"
    return out


def _dotted(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys += _dotted(v, f"{prefix}{k}.")
    return keys


def check_config(cfg: Any, source: Any = lambda key: "default", prefix: str = "") -> None:
    """Every `checked` field of `cfg` (recursively) against its rule; one UserError line."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        rule = f.metadata.get("check")
        why = rule.problem(value) if rule is not None else None
        if why:
            raise UserError(f"{key}={value!r} ({source(key)}): {why}; "
                            f"fix it with --set {key}=... or in the config file")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, source, key + ".")
    validate = getattr(cfg, "validate", None)
    if callable(validate):  # rules that involve several fields or mappings
        validate()


def save_config(cfg: Any, path: Path, task: str) -> None:
    """The resolved config as YAML (loadable again with --config)."""
    body = {"task": task, **to_dict(cfg)}
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=False))
