"""Turning a spec (+ optional weights file) into an open_clip model with checked weights."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
from torch import nn

from ..errors import UserError
from .spec import RANDOM_TAG, BackboneSpec, tiny_world_dir
from .weights import load_into, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    model: nn.Module
    tokenizer: Callable
    source: str


class _NoRandomInitNotice(logging.Filter):
    """open_clip announces random init on the root logger even when we load weights right
    after; that line would mislead users, so it is dropped while we build."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    notice = _NoRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _arch_quick_gelu(arch: str) -> bool:
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def _folder(folder: Path, name: str, missing_hint: str) -> BuiltModel:
    """An open_clip `local-dir` folder: open_clip_config.json + open_clip_model.safetensors."""
    weights = folder / "open_clip_model.safetensors"
    if not (folder / "open_clip_config.json").is_file() or not weights.is_file():
        raise UserError(f"{name}: weights missing from {folder}; {missing_hint}")
    spec = f"local-dir:{folder}"
    model = open_clip.create_model(spec, load_weights=False)
    ckpt = read_checkpoint(weights)
    load_into(model, ckpt, name, quick_gelu=bool(ckpt.quick_gelu))
    return BuiltModel(model, open_clip.get_tokenizer(spec), str(weights))


def _pretrained(spec: BackboneSpec, cache_dir: str | None, allow_mismatch: bool) -> BuiltModel:
    """open_clip download; a GELU tag into a QuickGELU arch is refused (QuickGELU tags into a
    GELU arch are fixed silently, as open_clip's own `force_quick_gelu` does)."""
    arch, tag = spec.arch, spec.tag
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    tag_qg = bool(cfg.get("quick_gelu", False))
    if _arch_quick_gelu(arch) and not tag_qg:
        what = f"pretrained tag '{tag}' was trained with GELU but '{arch}' uses QuickGELU"
        if not allow_mismatch:
            raise UserError(f"{what}; use --backbone {arch.removesuffix('-quickgelu')}:{tag} "
                            "(or pass --allow-activation-mismatch if you really mean it)")
        log.warning("%s; loading it anyway (activation mismatch allowed)", what)
    with _quiet_download(), _offline_when_unreachable(cfg) as unreachable:
        try:
            model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=tag_qg,
                                           cache_dir=cache_dir)
        except Exception as exc:
            raise _download_error(spec, exc, unreachable) from exc
    return BuiltModel(model, open_clip.get_tokenizer(arch), f"open_clip pretrained '{tag}'")


# --- download failures: one clear line, quickly --------------------------------------------

# Loggers that narrate a download (retries, cache misses) and warn again about what we
# report ourselves; open_clip logs on the root logger from its own files (see _Captured).
_CHATTY_LOGGERS = ("huggingface_hub", "open_clip", "urllib3")
# Exception types (by name, along the cause/context chain) that mean "no network".
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "NetworkError", "OfflineModeIsEnabled",
                   "LocalEntryNotFoundError", "gaierror", "URLError", "NameResolutionError",
                   "ConnectionError", "NewConnectionError", "MaxRetryError"}


class _Captured(logging.Filter):
    """Holds back root-logger records emitted from open_clip's own files."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.prefix = str(Path(open_clip.__file__).resolve().parent) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        if str(Path(record.pathname).resolve()).startswith(self.prefix):
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def _quiet_download():
    """Silence open_clip's and huggingface_hub's logging and warnings for one call.

    On success, what open_clip logged at WARNING or above and the warnings raised are
    replayed (they may matter: e.g. a QuickGELU note); on failure they are dropped in favour
    of our one-line UserError (and shown at debug level)."""
    root = logging.getLogger()
    captured = _Captured()
    levels = {name: logging.getLogger(name).level for name in _CHATTY_LOGGERS}
    root.addFilter(captured)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    failed = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        failed = False
    finally:
        root.removeFilter(captured)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if failed:
            for record in captured.records:
                log.debug("open_clip said: %s", record.getMessage())
        else:
            for record in captured.records:
                if record.levelno >= logging.WARNING:
                    root.handle(record)
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _download_host(cfg: dict) -> str | None:
    """The host open_clip will fetch a pretrained config's weights from."""
    from urllib.parse import urlparse

    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import constants as hf_constants
        except ImportError:
            hf_constants = None
        if hf_constants is not None:
            return urlparse(hf_constants.ENDPOINT).hostname
    return urlparse(cfg["url"]).hostname if cfg.get("url") else None


def _resolves(host: str, timeout: float = 5.0) -> bool | None:
    """True/False when DNS answers for `host`, None when it does not answer in time."""
    import socket
    import threading

    answer: list[bool] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
            answer.append(True)
        except socket.gaierror:
            answer.append(False)
        except OSError:
            answer.append(True)  # some other local problem: let the download decide

    worker = threading.Thread(target=look_up, daemon=True)
    worker.start()
    worker.join(timeout)
    return answer[0] if answer else None


@contextlib.contextmanager
def _offline_when_unreachable(cfg: dict):
    """Yield whether the download host is known to be unreachable (its name does not
    resolve, and no proxy is configured that could resolve it for us).

    Only then, huggingface_hub runs in offline mode for the call: a cached file is still
    used, a missing one fails at once instead of after ~45 s of retries. With a network
    (or a proxy, or a name that resolves) nothing changes."""
    import urllib.request

    host = _download_host(cfg)
    unreachable = False
    if host and not _hf_offline_env() and not urllib.request.getproxies():
        unreachable = _resolves(host) is False
    hf_constants = None
    if unreachable and cfg.get("hf_hub"):
        try:
            from huggingface_hub import constants as hf_constants
        except ImportError:
            hf_constants = None
    if hf_constants is None:
        yield unreachable
        return
    saved = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield unreachable
    finally:
        hf_constants.HF_HUB_OFFLINE = saved


def _hf_offline_env() -> bool:
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download_error(spec: BackboneSpec, exc: Exception, unreachable: bool) -> UserError:
    """The one-line UserError for a failed open_clip create_model(pretrained=TAG)."""
    chain = _chain(exc)
    elsewhere = f"download the weights elsewhere and pass --backbone {spec.arch} --weights FILE"
    fix = f"{elsewhere}, or set HF_HUB_OFFLINE=1 and pre-populate the Hugging Face cache"
    if _hf_offline_env():
        return UserError(f"could not load weights for {spec}: HF_HUB_OFFLINE is set and they are "
                         f"not in the Hugging Face cache; {elsewhere}, or fill the cache first")
    if unreachable or any(type(e).__name__ in _NETWORK_ERRORS for e in chain):
        return UserError(f"could not download weights for {spec}: no network: {fix}")
    if not str(exc).startswith("Failed to download"):  # open_clip's wording for fetch errors
        return UserError(f"open_clip could not build {spec}: {type(exc).__name__}: {_one_line(exc)}")
    inner = chain[-1]
    return UserError(f"could not download weights for {spec} ({type(inner).__name__}: "
                     f"{_one_line(inner)}); if this machine is offline, {fix}")


def _random(spec: BackboneSpec) -> BuiltModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(spec.arch)
    return BuiltModel(model, open_clip.get_tokenizer(spec.arch), "random init (seed 0)")


def _from_file(spec: BackboneSpec, weights: Path, allow_torchscript: bool,
               allow_mismatch: bool) -> BuiltModel:
    """ARCH + --weights FILE; the file's activation (recorded, or OpenAI's) must match ARCH."""
    ckpt = read_checkpoint(weights, allow_torchscript=allow_torchscript)
    model = open_clip.create_model(spec.arch)
    load_into(model, ckpt, spec.arch, quick_gelu=_arch_quick_gelu(spec.arch),
              allow_activation_mismatch=allow_mismatch)
    return BuiltModel(model, open_clip.get_tokenizer(spec.arch), str(weights))


def build_model(spec: BackboneSpec, weights: str | Path | None = None, *,
                allow_torchscript: bool = False, cache_dir: str | None = None,
                allow_activation_mismatch: bool = False) -> BuiltModel:
    """The open_clip model of `spec`; `allow_activation_mismatch` turns QuickGELU/GELU
    mismatches into a logged warning instead of a UserError."""
    with _quiet_random_init():
        return _build(spec, weights, allow_torchscript, cache_dir, allow_activation_mismatch)


def _build(spec: BackboneSpec, weights, allow_torchscript: bool, cache_dir: str | None,
           allow_mismatch: bool) -> BuiltModel:
    if spec.is_tiny_world:
        return _folder(tiny_world_dir(), "tiny-world",
                       "rebuild them with 'clipheads clip train --config tiny_world --install' "
                       "(docs/tiny_world.md) or pass --backbone ARCH:TAG")
    if spec.local_dir is not None:
        return _folder(spec.local_dir, str(spec), "export a trained CLIP there first")
    if spec.tag == RANDOM_TAG:
        return _random(spec)
    if spec.tag is not None:
        return _pretrained(spec, cache_dir, allow_mismatch)
    if weights is None:
        raise UserError(f"backbone '{spec}' needs --weights FILE")
    return _from_file(spec, Path(weights), allow_torchscript, allow_mismatch)
