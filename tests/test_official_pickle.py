"""The official STARK trainer file loads without STARK's code, and nothing in a checkpoint runs while it loads."""
import builtins
import copyreg
import io
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from functools import partial

import numpy as np
import pytest
import torch

from heads import CornerHead
from tracker.model.checkpoint import (_STARK_PICKLE, CheckpointError, load_checkpoint, load_official_checkpoint, load_trunk,
                                official_names, read_checkpoint, save_checkpoint)
from tracker.model import StarkLightning

STARK_MODULES = ("lib", "lib.train", "lib.train.admin", "lib.train.admin.settings", "lib.train.admin.local",
                 "lib.train.admin.stats")


class EnvironmentSettings:
    def __init__(self):
        self.workspace_dir, self.tensorboard_dir = "/home/stark/workspace", "/home/stark/workspace/tensorboard"
        self.lasot_dir, self.got10k_dir = "/data/lasot", "/data/got10k/train"


class Settings:
    def __init__(self):
        self.env, self.device = EnvironmentSettings(), torch.device("cpu")
        self.script_name, self.config_name = "stark_lightning_X_trt", "baseline_rephead_4_lite_search5"
        self.search_area_factor = {"template": 2.0, "search": 5.0}
        self.output_sz = {"template": 128, "search": 320}
        self.local_rank, self.use_lmdb, self.save_dir, self.grad_clip_norm = -1, False, None, 0.1


class AverageMeter:
    def __init__(self, val):
        self.val, self.avg, self.sum, self.count = val, val, val * 4, 4


class StatValue:
    def __init__(self, val):
        self.val, self.history = val, [val, val]


class Evil:
    """Named as STARK's, but its pickle calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Exec:
    """A harmless but observable payload: builtins.exec creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class Plain:
    pass


_CLASSES = {"lib.train.admin.settings": [Settings], "lib.train.admin.local": [EnvironmentSettings, Evil],
            "lib.train.admin.stats": [AverageMeter, StatValue]}


def _save_as_stark(monkeypatch, obj, path, **kwargs):
    """torch.save with STARK's module names importable only while it runs, as on the machine that trained."""
    with monkeypatch.context() as m:
        for name in STARK_MODULES:
            module = types.ModuleType(name)
            for cls in _CLASSES.get(name, []):
                m.setattr(cls, "__module__", name)
                setattr(module, cls.__name__, cls)
            m.setitem(sys.modules, name, module)
        torch.save(obj, path, **kwargs)
    assert "lib" not in sys.modules


def _model():
    return StarkLightning(partial(CornerHead), template_size=32, search_size=64)


def _trainer_checkpoint(model, **overrides):
    """STARK's base_trainer.save_checkpoint layout, with a real AdamW state and numpy floats in the stats."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    net = OrderedDict((theirs, model.state_dict()[ours]) for ours, theirs in official_names(model).items())
    stats = OrderedDict(train=OrderedDict(Loss=AverageMeter(np.float64(0.25)), LR=StatValue(1e-4)))
    return {"epoch": 500, "actor_type": "STARKLightningXtrtActor", "net_type": "STARKLightningXtrt", "net": net,
            "net_info": None, "constructor": None, "optimizer": optimizer.state_dict(), "stats": stats,
            "settings": Settings(), **overrides}


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_official_trainer_file_loads_without_starks_code(tmp_path, monkeypatch, zipfile):
    source, path = _model(), tmp_path / "STARK_Lightning_X_trt_ep0500.pth.tar"
    _save_as_stark(monkeypatch, _trainer_checkpoint(source), path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # STARK's classes: the plain loader refuses the file
    assert list(read_checkpoint(path)) == ["net"]
    target = _model()
    load_official_checkpoint(target, path)
    ours, theirs = source.state_dict(), target.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in official_names(source))
    trunk = StarkLightning(partial(CornerHead, block="dsconv", channels=64, final_kernel_size=1),
                           template_size=32, search_size=64)
    load_trunk(trunk, path)
    assert torch.equal(trunk.encoder.linear1.weight, source.encoder.linear1.weight)


@pytest.mark.parametrize("where", ["net", "settings", "lib_class"])
def test_payloads_are_refused_before_they_run(tmp_path, monkeypatch, where):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth.tar"
    model = _model()
    if where == "net":
        ckpt = _trainer_checkpoint(model)
        ckpt["net"]["bottleneck.weight"], refused = Exec(marker), "builtins.exec"
    elif where == "settings":
        ckpt, refused = _trainer_checkpoint(model, settings=Exec(marker)), "builtins.exec"
    else:
        settings = Settings()
        settings.env = Evil(marker)  # inside a stand-in's state
        ckpt, refused = _trainer_checkpoint(model, settings=settings), f"{os.system.__module__}.system"
    _save_as_stark(monkeypatch, ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(model, path)
    assert refused in str(err.value) and path.name in str(err.value)
    assert not marker.exists()


def test_payload_is_live():
    """The control for the test above: unpickled by plain pickle, the payload does run."""
    marker = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lighttrack-payload-{os.getpid()}")
    try:
        pickle.loads(pickle.dumps(Exec(marker), protocol=2))
        assert os.path.exists(marker)
    finally:
        if os.path.exists(marker):
            os.remove(marker)


def test_official_net_must_hold_only_tensors(tmp_path, monkeypatch):
    path = tmp_path / "odd.pth.tar"
    _save_as_stark(monkeypatch, _trainer_checkpoint(_model(), net={"bottleneck.weight": StatValue(1.0)}), path)
    with pytest.raises(CheckpointError, match="'bottleneck.weight'"):
        load_official_checkpoint(_model(), path)


def test_own_checkpoints_load_weights_only(tmp_path, monkeypatch):
    state = _model().state_dict()
    path = save_checkpoint(tmp_path / "last.pt", model=state, step=3)
    assert load_checkpoint(path)["step"] == 3
    save_checkpoint(path, model=state, extra=Plain())
    with pytest.raises(CheckpointError, match="Plain"):
        load_checkpoint(path)
    _save_as_stark(monkeypatch, {"model": state, "settings": Settings()}, path)  # stand-ins only for 'net' files
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


class Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("fn,args", [(eval, ("1",)), (getattr, (Plain, "x")), (subprocess.Popen, (["true"],)),
                                     (copyreg._reconstructor, (Plain, object, None))])
def test_other_globals_are_refused(tmp_path, fn, args):
    path = tmp_path / "other.pth.tar"
    torch.save({"net": {}, "settings": Call(fn, *args)}, path)
    with pytest.raises(CheckpointError, match=rf"{fn.__module__}\.{fn.__name__}"):
        load_official_checkpoint(_model(), path)


@pytest.mark.filterwarnings("error")
def test_numpy_1_module_names_resolve():
    data = pickle.dumps(np.float64(0.5), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert _STARK_PICKLE.load(io.BytesIO(data)) == 0.5
