"""The light CLI paths: `list`, help and usage errors load neither torch nor open_clip, the
torch-free catalog equals open_clip's own registry, and an offline download fails on one line."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
from clipheads.core.backbone import catalog
from clipheads.core.backbone.spec import list_backbones
from PIL import Image

PROBE = """
import sys
from clipheads.core.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print(code, 'torch' in sys.modules, 'open_clip' in sys.modules, file=sys.stderr)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"OMP_NUM_THREADS": "1"}, **extra)
    return env


def _probe(argv: list[str], tmp_path: Path) -> tuple[int, bool, bool, str, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                          text=True, cwd=tmp_path, env=_env(), timeout=120)
    *lines, last = proc.stderr.strip().splitlines()
    code, torch_loaded, oc_loaded = last.split()
    return int(code), torch_loaded == "True", oc_loaded == "True", proc.stdout, "\n".join(lines)


def _reference(tiny_archs: dict[str, str]) -> dict[str, list[str]]:
    """open_clip's own answer, minus the test architectures conftest registers."""
    extra = set(tiny_archs.values())
    return {a: open_clip.list_pretrained_tags_by_model(a) for a in open_clip.list_models()
            if a not in extra}


def test_static_catalog_equals_open_clip(tiny_archs):
    package = catalog.open_clip_dir()
    archs = catalog.static_architectures(package)
    tags = catalog.static_pretrained(package)
    ref = _reference(tiny_archs)
    assert archs == list(ref)  # same names, same (natural) order
    for arch in archs:
        assert tags.get(arch, []) == ref[arch], arch
    # Every table entry open_clip knows, -quickgelu copies included, in its order.
    from open_clip import pretrained as oc_pretrained
    assert tags == {k: list(v) for k, v in oc_pretrained._PRETRAINED.items()}
    assert any(a.endswith("-quickgelu") and tags[a] for a in tags)


def test_list_backbones_static_in_a_fresh_process(tiny_archs, tmp_path):
    code = ("import json, sys; from clipheads.core.backbone import catalog as c; "
            "b = c.list_backbones(); "
            "print(json.dumps([c.catalog_source(), 'torch' in sys.modules, 'open_clip' in sys.modules, b]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                         cwd=tmp_path, timeout=120, check=True).stdout
    source, torch_loaded, oc_loaded, backbones = json.loads(out)
    assert (source, torch_loaded, oc_loaded) == ("static", False, False)
    assert list(backbones)[0] == "tiny-world" and backbones["tiny-world"] == ["bundled"]
    del backbones["tiny-world"]
    assert backbones == _reference(tiny_archs)


def test_list_backbones_in_process_uses_the_live_registry(tiny_archs):
    """open_clip already loaded: its registry (with run-time additions) is the answer."""
    backbones = list_backbones()
    assert list(backbones)[0] == "tiny-world"
    assert tiny_archs["vit"] in backbones
    assert backbones["ViT-B-32"] == open_clip.list_pretrained_tags_by_model("ViT-B-32")


def test_layout_change_falls_back_to_importing_open_clip(tmp_path, monkeypatch, caplog):
    (tmp_path / "model_configs").mkdir()
    (tmp_path / "pretrained.py").write_text("_PRETRAINED = build_it()\n")
    with pytest.raises(catalog.CatalogLayoutError):
        catalog.static_pretrained(tmp_path)
    with pytest.raises(catalog.CatalogLayoutError):
        catalog.static_architectures(tmp_path)
    monkeypatch.setattr(catalog, "open_clip_dir", lambda: tmp_path)
    catalog._from_files.cache_clear()
    try:
        with caplog.at_level(logging.DEBUG, logger=catalog.__name__):
            archs, tags, source = catalog._from_files()
    finally:
        catalog._from_files.cache_clear()
    assert source == "open_clip" and "ViT-B-32" in archs and tags["ViT-B-32"]
    assert any("importing open_clip" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)


def test_unexpected_table_edits_are_refused(tmp_path):
    (tmp_path / "pretrained.py").write_text(
        "def _pcfg(url='', **kw):\n    return {'url': url, **kw}\n"
        "_A = dict(x=_pcfg(quick_gelu=True), y=_pcfg())\n"
        "_PRETRAINED = {'A': _A, 'B': dict(z={'quick_gelu': False})}\n"
        "_PRETRAINED_quickgelu = {}\n"
        "for k, v in _PRETRAINED.items():\n"
        "    quick_gelu_tags = {}\n"
        "    for tk, tv in v.items():\n"
        "        if tv.get('quick_gelu', False):\n"
        "            quick_gelu_tags[tk] = tv\n"
        "    if quick_gelu_tags:\n"
        "        _PRETRAINED_quickgelu[k + '-quickgelu'] = quick_gelu_tags\n"
        "_PRETRAINED.update(_PRETRAINED_quickgelu)\n")
    assert catalog.static_pretrained(tmp_path) == {"A": ["x", "y"], "B": ["z"], "A-quickgelu": ["x"]}
    with open(tmp_path / "pretrained.py", "a") as fh:
        fh.write("_PRETRAINED['C'] = _A\n")
    with pytest.raises(catalog.CatalogLayoutError, match="unexpected"):
        catalog.static_pretrained(tmp_path)


@pytest.mark.parametrize("argv, code, check", [
    (["list"], 0, lambda out, err: "Backbones" in out and "ViT-B-32" in out and "tiny-world" in out),
    (["list", "--json"], 0, lambda out, err: json.loads(out)["backbones"]["tiny-world"] == ["bundled"]),
    (["--help"], 0, lambda out, err: "usage: clipheads" in out),
    (["lseg", "--help"], 0, lambda out, err: "infer" in out),
    (["lseg", "infer", "--image", "x.png", "--labels", "a,b"], 2,
     lambda out, err: err.startswith("clipheads: error:") and "--out" in err),
    (["nonsense"], 2, lambda out, err: err.startswith("clipheads: error:") and "choose from" in err),
    (["lsge"], 2, lambda out, err: "did you mean: lseg" in err),
])
def test_light_commands_load_neither_torch_nor_open_clip(argv, code, check, tmp_path):
    got, torch_loaded, oc_loaded, out, err = _probe(argv, tmp_path)
    assert got == code, err
    assert check(out, err), (out, err)
    assert (torch_loaded, oc_loaded) == (False, False)


def test_list_json_backbones_match_open_clip(tiny_archs, tmp_path):
    _, _, _, out, _ = _probe(["list", "--json"], tmp_path)
    backbones = json.loads(out)["backbones"]
    assert backbones.pop("tiny-world") == ["bundled"]
    assert backbones == _reference(tiny_archs)


def test_offline_download_fails_on_one_line(tmp_path):
    """A pretrained tag with no network (HF_HUB_OFFLINE=1 to be sure): one line, exit 2."""
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), "red").save(image)
    cmd = [sys.executable, "-m", "clipheads.core.cli", "classify", "infer", "--image", str(image),
           "--labels", "a,b", "--backbone", "ViT-B-32:openai", "--out", str(tmp_path / "out")]
    env = _env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("clipheads: error:"), proc.stderr
    assert "ViT-B-32:openai" in lines[0] and "--backbone ViT-B-32 --weights FILE" in lines[0]


def test_unreachable_hub_fails_fast_and_quietly(tmp_path, monkeypatch, capfd, caplog):
    """Without HF_HUB_OFFLINE, where the Hub's name does not resolve (simulated, so the test
    never downloads anywhere): the download path notices, skips huggingface_hub's ~45 s of
    retries (no connection is even attempted) and says 'no network'."""
    import socket

    from clipheads.core.backbone import build
    from clipheads.core.backbone.spec import BackboneSpec
    from clipheads.core.errors import UserError
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(build, "_resolves", lambda host: False)

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    attempts: list[object] = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(UserError) as info:
        build._pretrained(BackboneSpec("ViT-B-32", "openai"), str(tmp_path / "cache"), False)
    message = str(info.value)
    assert message.startswith("could not download weights for ViT-B-32:openai: no network: "
                              "download the weights elsewhere and pass --backbone ViT-B-32 "
                              "--weights FILE") and "\n" not in message
    assert attempts == []  # offline mode for the call: no retries against an unreachable host
    out, err = capfd.readouterr()
    assert not out and not err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert hf_constants.HF_HUB_OFFLINE is False  # offline mode was for that call only


def test_quiet_download_replays_on_success_and_restores(caplog):
    """The silencing is for the call only: levels restored, warnings re-raised on success."""
    from clipheads.core.backbone import build

    hf = logging.getLogger("huggingface_hub")
    before = hf.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with build._quiet_download():
            assert hf.level > logging.CRITICAL
            logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s")
            warnings.warn("kept", UserWarning)
        with pytest.raises(RuntimeError), build._quiet_download():
            warnings.warn("dropped", UserWarning)
            raise RuntimeError("boom")
    assert hf.level == before
    assert [str(w.message) for w in caught] == ["kept"]
    assert "Retrying" not in caplog.text
