import sys, torch
sys.path.insert(0, '/work/main/tests')
from test_clipasso_cli import *
def test_dbg(tmp_path, capsys):
    img = drawing(tmp_path / "a.png")
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"),
                      ["strokes.canvas=48", "strokes.count=6", "optim.seeds=2"])
    task = ClipassoTask(cfg, Context(cfg))
    sk = task.sketcher(); t = task.load_target(img)
    m1 = sk.saliency(t)
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(img), "--strokes", "6", "--iters", "0",
                            *FAST, "--out", str(tmp_path), "--json")
    m2 = sk.saliency(t)
    t2 = task.load_target(img)
    print("DBG", (m1.placement-m2.placement).abs().max(), (m1.attention-m2.attention).abs().max(), (t.pixels-t2.pixels).abs().max(), torch.get_num_threads())
    assert 0
