"""Loading checkpoints that pickle more than tensors, without running code from them.

A `.pth`/`.ckpt` file is a pickle, and unpickling calls whatever functions the file
names: a crafted checkpoint can run `os.system` the moment it is loaded. PyTorch's
`weights_only=True` loader only rebuilds tensors and plain containers, so it refuses the
many real checkpoints that also pickle a config object (NVlabs GroupViT's `.pth` files
keep an omegaconf `DictConfig` under "config"; PyTorch Lightning files keep their
hyper-parameters).

`load_checkpoint_object` tries `weights_only=True` first. When the file names globals
outside torch's allow-list it loads again through a restricted unpickler: the globals
torch needs to rebuild tensors (and a few inert builtin types) are the real objects; every
other global becomes an inert `StubObject` class that only records what the pickle passed
to it. No module named by the file is imported and no function it names is called, so the
file loads without the config library installed and a malicious file runs nothing.
`trust_pickle=True` skips all this and uses plain `torch.load(weights_only=False)`, which
may run code from the file.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import UserError, first_line

__all__ = ["CheckpointObject", "StubObject", "load_checkpoint_object"]

LoadMode = Literal["weights_only", "restricted", "trusted"]


@dataclass(frozen=True)
class CheckpointObject:
    """What a checkpoint file holds, and how it was loaded.

    `stubbed`: the globals ("module.name") the file named that were replaced by
    `StubObject` classes (empty unless `mode` is "restricted")."""

    obj: Any
    stubbed: tuple[str, ...] = ()
    mode: LoadMode = "weights_only"


class StubObject:
    """An inert stand-in for an object whose class the restricted loader would not import.

    Each stubbed global becomes its own subclass (`global_name` says which); pickle's
    opcodes only fill in the record: `args`/`kwargs` (constructor or `__reduce__` call),
    `state` (BUILD, i.e. what `__setstate__` would have received; None if never set),
    `listitems` (APPEND/APPENDS) and `dictitems` (SETITEM/SETITEMS). A global that is only
    referenced (e.g. `typing.Any`) is the stub class itself. Nothing here runs code from
    the file; stubs can be deep-copied but not pickled again."""

    __slots__ = ("args", "kwargs", "state", "listitems", "dictitems")
    global_name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StubObject:
        self = super().__new__(cls)
        self.args, self.kwargs, self.state = tuple(args), dict(kwargs), None
        self.listitems: list[Any] = []
        self.dictitems: dict[Any, Any] = {}
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # __new__ recorded everything
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.listitems.append(item)

    def extend(self, items: Any) -> None:
        self.listitems.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dictitems[key] = value

    def __reduce_ex__(self, protocol: Any) -> tuple:  # for copy.deepcopy
        return (_make_stub, (type(self), self.args, self.kwargs), self.state,
                iter(self.listitems), iter(self.dictitems.items()))

    def __repr__(self) -> str:
        return f"<stub {self.global_name}>"


def _make_stub(cls: type[StubObject], args: tuple, kwargs: dict) -> StubObject:
    return cls(*args, **kwargs)


# Names that must never resolve to the real object, whatever torch's allow-list holds.
_NEVER_MODULES = ("os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "runpy",
                  "pickle", "_pickle", "marshal", "ctypes", "socket", "code", "codeop", "pty",
                  "io", "_io", "builtins", "__builtin__", "functools", "operator", "copyreg",
                  "types", "inspect", "pdb", "timeit", "webbrowser", "multiprocessing")
_REBUILD_MODULES = ("torch._utils", "torch._tensor", "torch.serialization", "_codecs")
_BUILTIN_TYPES: dict[str, Any] = {f"builtins.{t.__name__}": t for t in (
    bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset, slice, range)}
_EXTRA: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,
    "collections.defaultdict": collections.defaultdict,
    "collections.deque": collections.deque,
}


def _torch_allowed() -> dict[str, Any]:
    """What torch's weights-only unpickler resolves, limited to torch and `_codecs.encode`."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # private API moved: the tensor rebuild essentials
        allowed = {f"torch._utils.{n}": getattr(torch._utils, n) for n in (
            "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
            "_rebuild_parameter_with_state") if hasattr(torch._utils, n)}
        allowed.update({str(t): t for t in vars(torch).values() if isinstance(t, torch.dtype)})
        allowed.update({"torch.Size": torch.Size, "torch.device": torch.device,
                        "torch.nn.parameter.Parameter": torch.nn.Parameter})
    return {k: v for k, v in allowed.items() if k.startswith("torch.") or k == "_codecs.encode"}


def _inert(value: Any) -> bool:
    """Types, dtypes and the like, or one of torch's rebuild helpers (never a general function)."""
    if isinstance(value, type) or not callable(value):
        return True
    return getattr(value, "__module__", None) in _REBUILD_MODULES


_ALLOWED: dict[str, Any] | None = None


def _allowed() -> dict[str, Any]:
    global _ALLOWED
    if _ALLOWED is None:
        allowed = {**_torch_allowed(), **_EXTRA}
        allowed = {k: v for k, v in allowed.items()
                   if k.split(".")[0] not in _NEVER_MODULES and _inert(v)}
        _ALLOWED = {**allowed, **_BUILTIN_TYPES}
    return _ALLOWED


# What BUILD may set state on: objects the file itself built, never shared globals.
_TAKES_STATE = (StubObject, torch.Tensor, dict, list, collections.deque)


class RefusedPickle(pickle.UnpicklingError):
    """The file asks the restricted unpickler for something it will not do."""


def _describe(obj: Any) -> str:
    if isinstance(obj, type) and issubclass(obj, StubObject):
        return obj.global_name
    if isinstance(obj, StubObject):
        return f"a stubbed {obj.global_name} object"
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _restricted_module(stubbed: dict[str, type[StubObject]]) -> types.ModuleType:
    """A pickle module for `torch.load` whose unpickler imports nothing; fills `stubbed`."""
    allowed = _allowed()
    allowed_ids = {id(v) for v in allowed.values()}

    def callable_ok(obj: Any) -> bool:
        return id(obj) in allowed_ids or (isinstance(obj, type) and issubclass(obj, StubObject))

    class Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be guarded
        dispatch = dict(pickle._Unpickler.dispatch)

        def find_class(self, module: str, name: str) -> Any:
            if self.proto < 3 and self.fix_imports:  # protocol 2 writes Python 2 names
                if (module, name) in _compat_pickle.NAME_MAPPING:
                    module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                elif module in _compat_pickle.IMPORT_MAPPING:
                    module = _compat_pickle.IMPORT_MAPPING[module]
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            if key not in stubbed:
                stubbed[key] = type(f"Stub[{key}]", (StubObject,), {"__slots__": (), "global_name": key})
            return stubbed[key]

        def _instantiate(self, klass: Any, args: list) -> None:
            if not callable_ok(klass):
                raise RefusedPickle(f"a call to {_describe(klass)}")
            super()._instantiate(klass, args)

        def load_reduce(self) -> None:
            if not callable_ok(self.stack[-2]):
                raise RefusedPickle(f"a call to {_describe(self.stack[-2])}")
            super().load_reduce()

        def load_build(self) -> None:  # never on a class or function: that would outlive the load
            inst = self.stack[-2]
            if isinstance(inst, type) or not isinstance(inst, _TAKES_STATE):
                raise RefusedPickle(f"new state for {_describe(inst)} (only stubs, tensors and "
                                    "containers built by the file may get state)")
            super().load_build()

        dispatch[pickle.REDUCE[0]] = load_reduce
        dispatch[pickle.BUILD[0]] = load_build

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType(f"{__name__}.restricted")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def _is_torchscript(path: Path) -> bool:
    """Exactly torch.load's test: a TorchScript zip is handed to torch.jit.load (runs code)."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return False
    try:
        return "constants.pkl" in torch._C.PyTorchFileReader(str(path)).get_all_records()
    except Exception:  # torch cannot open it either, so torch.load will not dispatch
        return False


def _torch_load(path: Path, **kwargs: Any) -> Any:
    """torch.load onto the CPU, memory-mapped when the format allows it."""
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, **kwargs)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
    return torch.load(str(path), map_location="cpu", **kwargs)


def _refused_by_weights_only(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc)


def load_checkpoint_object(path: str | Path, *, trust_pickle: bool = False) -> CheckpointObject:
    """The object a torch checkpoint file holds, loaded without running code from it.

    Plain data loads with `weights_only=True`; a file that pickles other objects (configs,
    hyper-parameters) loads through the restricted unpickler with those objects stubbed
    (see `StubObject`). `trust_pickle=True` uses plain pickle instead, which may run code.
    Every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; check the path")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty; re-download or re-save it")
    try:
        if trust_pickle:
            return CheckpointObject(_torch_load(path, weights_only=False), (), "trusted")
        if _is_torchscript(path):
            raise UserError(f"{path} is a TorchScript archive, which runs code when loaded; load it with "
                            "torch.jit.load if you trust it, or save its state_dict() instead")
        try:
            return CheckpointObject(_torch_load(path, weights_only=True), (), "weights_only")
        except Exception as exc:
            if not _refused_by_weights_only(exc):
                raise
        stubbed: dict[str, type[StubObject]] = {}
        obj = _torch_load(path, weights_only=False, pickle_module=_restricted_module(stubbed))
        return CheckpointObject(obj, tuple(sorted(stubbed)), "restricted")
    except UserError:
        raise
    except RefusedPickle as exc:
        raise UserError(f"cannot load checkpoint {path} safely: it pickles {first_line(exc, 160)}, which the "
                        "restricted loader refuses; if you trust the file, load it with trust_pickle=True "
                        "(--trust-pickle; this may run code)") from exc
    except Exception as exc:  # torch and pickle raise many types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch file "
                        f"({type(exc).__name__}: {first_line(exc, 160)}); re-download or re-save it") from exc
