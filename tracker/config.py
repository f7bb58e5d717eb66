"""Typed schemas for the tracker's config groups, and helpers that compose and validate configs.

The group presets extend these schemas (`defaults: - trainer_schema`); `hydra_plugins/lighttrack_schemas`
provides them to Hydra only while LightTrack's configs are composed (no other Hydra app sees them).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def runs_root() -> Path:
    """Where everything is written, absolute: $LIGHTTRACK_RUNS (from the working directory when relative), else
    runs/ beside conf/. The code's reader of the folder the configs name `paths.runs` (conf/paths/default.yaml
    reads the same variable; the apps set it to this path before composing)."""
    return Path(os.environ.get("LIGHTTRACK_RUNS") or CONF_DIR.parent / "runs").absolute()


STRIDE = 16  # the backbone's total stride (tracker/model/backbone.py: four stride-2 stages); validation reads it


class ConfigError(ValueError):
    """A config value outside what is allowed (`not_allowed` words it)."""


def not_allowed(key: str, value: Any, allowed: str, error: type[ValueError] = ConfigError) -> ValueError:
    """The one wording of a bad value: `<key>=<value> is not allowed: <what is>` (values shown as given)."""
    return error(f"{key}={value} is not allowed: {allowed}")


@dataclass
class ModelConf:
    """STARK-Lightning; the head comes from the `head` group."""

    _target_: str = "tracker.model.StarkLightning"
    head: Any = "${head}"
    template_size: int = 128
    search_size: int = 320
    hidden_dim: int = 128
    num_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    backbone_depths: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    backbone_widths: list[int] = field(default_factory=lambda: [48, 48, 96, 192])
    frozen_bn: bool = True

    def __post_init__(self) -> None:
        for name in ("template_size", "search_size"):
            size = getattr(self, name)
            if size < STRIDE or size % STRIDE:
                raise not_allowed(f"model.{name}", size, f"a positive multiple of {STRIDE}")
        if self.hidden_dim % 2 or self.hidden_dim % self.num_heads:
            raise not_allowed("model.hidden_dim", self.hidden_dim, f"even and divisible by model.num_heads="
                                                                   f"{self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise not_allowed("model.dropout", self.dropout, "in [0, 1)")
        for name in ("backbone_depths", "backbone_widths"):
            values: Sequence[int] = getattr(self, name)
            if len(values) != 4 or any(v < 1 for v in values):
                raise not_allowed(f"model.{name}", list(values), "4 positive integers (stage0..3)")


FIDELITIES = ("full", "finetune", "head")
AMP_MODES = ("auto", "bf16", "fp16", "fp32")


def _check(conf: Any, prefix: str, positive_ints: Sequence[str] = (), non_negative_ints: Sequence[str] = (),
           non_negative: Sequence[str] = (), positive: Sequence[str] = ()) -> None:
    """Raises a ConfigError naming the first field outside its range."""
    rules = [(positive_ints, lambda v: v >= 1, "an integer >= 1"),
             (non_negative_ints, lambda v: v >= 0, "an integer >= 0"),
             (non_negative, lambda v: v >= 0, "a number >= 0"), (positive, lambda v: v > 0, "a number > 0")]
    for names, ok, allowed in rules:
        for name in names:
            if not ok(getattr(conf, name)):
                raise not_allowed(f"{prefix}.{name}", repr(getattr(conf, name)), allowed)


def _check_partial_target(node: Any, where: str, base: str) -> None:
    """An optimiser or schedule node names an importable subclass of `base` and is `_partial_` (the trainer
    supplies the parameters or the optimiser)."""
    import importlib

    def get_class(path: str) -> Any:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    target = node.get("_target_")
    if not node.get("_partial_", False):
        raise not_allowed(f"{where}._partial_", repr(node.get("_partial_")),
                          "true (the trainer passes the parameters or the optimiser)")
    try:
        cls, parent = get_class(str(target)), get_class(base)
    except Exception:
        raise not_allowed(f"{where}._target_", repr(target), f"an importable class, a subclass of {base}") from None
    if not (isinstance(cls, type) and issubclass(cls, parent)):
        raise not_allowed(f"{where}._target_", repr(target), f"a subclass of {base}")


# the optimiser and schedule a recipe runs by default: partial targets reading its flat fields
DEFAULT_STEPPERS: dict[str, dict[str, Any]] = {
    "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "weight_decay": "${..weight_decay}"},
    "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": "${..lr_step_epochs}",
                  "gamma": "${..lr_gamma}"},
}


def recipe_identity(recipe: dict) -> dict:
    """A training recipe (a plain dict: trainer or trainer.baseline_trunk) as it identifies a run: without its
    optimiser and schedule nodes when they are the defaults resolved against its own fields (what every run did
    before those nodes existed), so trunk keys and study recipes written then still match. Any other optimiser or
    schedule stays in."""
    flat = {k: v for k, v in recipe.items() if k not in DEFAULT_STEPPERS and not isinstance(v, dict)}
    implied = OmegaConf.to_container(OmegaConf.create({**flat, **DEFAULT_STEPPERS}), resolve=True)
    return {k: v for k, v in recipe.items() if not (k in DEFAULT_STEPPERS and v == implied[k])}


@dataclass
class TrainingRecipe:
    """What a training run's schedule and optimiser are: shared by a trial (TrainerConf) and the baseline
    trunk it may start from (BaselineTrunkConf). Defaults are STARK-Lightning's (SPEC.md)."""

    epochs: int = 500
    pairs_per_epoch: int = 60_000
    batch_size: int = 16
    lr: float = 1e-4
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    lr_step_epochs: int = 400
    lr_gamma: float = 0.1
    giou_weight: float = 2.0
    l1_weight: float = 5.0
    freeze_stage0: bool = True
    seed: int = 42
    # the optimiser and schedule as partial targets: called with (parameter groups, lr=lr) and (optimiser);
    # another one is an override (trainer.optimizer._target_=torch.optim.SGD +trainer.optimizer.momentum=0.9)
    optimizer: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_STEPPERS["optimizer"]))
    scheduler: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_STEPPERS["scheduler"]))

    _prefix = "trainer"  # how errors name the node (a class attribute, not a config field)

    def __post_init__(self) -> None:
        _check(self, self._prefix, positive_ints=("epochs", "pairs_per_epoch", "batch_size", "lr_step_epochs"),
               non_negative=("weight_decay", "grad_clip", "giou_weight", "l1_weight", "backbone_lr_scale"),
               positive=("lr",))
        if not 0 < self.lr_gamma <= 1:  # a step schedule's factor: 0 or less zeroes or flips the rate
            raise not_allowed(f"{self._prefix}.lr_gamma", repr(self.lr_gamma), "a factor in (0, 1]")
        for name, base in (("optimizer", "torch.optim.Optimizer"),
                           ("scheduler", "torch.optim.lr_scheduler.LRScheduler")):
            _check_partial_target(getattr(self, name), f"{self._prefix}.{name}", base)


@dataclass
class BaselineTrunkConf(TrainingRecipe):
    """How the baseline trunk that head and finetune trials start from is trained when `trainer.trunk` is null.
    A recipe of its own, so that sweeping the head trial's lr or batch size reuses one cached trunk; the crop
    sizes, jitter, frozen BN, device and precision come from the trainer."""

    # the synthetic generator's settings the trunk trains on in place of the trials' own `data.generate` ones
    # (a pretrained trunk sees more and more varied data than a head study needs); empty: the trials' data
    generate: Dict[str, Any] = field(default_factory=dict)

    _prefix = "trainer.baseline_trunk"

    def __post_init__(self) -> None:
        super().__post_init__()
        from .data.synthetic import SyntheticConfig

        known = {f.name for f in dataclasses.fields(SyntheticConfig)} - {"root"}
        for name in self.generate:
            if name not in known:
                raise not_allowed(f"{self._prefix}.generate.{name}", repr(self.generate[name]),
                                  f"a setting of the synthetic generator: {', '.join(sorted(known))}")


@dataclass
class TrainerConf(TrainingRecipe):
    """How a trial trains: STARK-Lightning's recipe (SPEC.md) at the preset's scale."""

    fidelity: str = "full"  # full | finetune | head
    trunk: Optional[str] = None  # checkpoint for finetune/head; null: the cached baseline trunk (baseline_trunk)
    baseline_trunk: BaselineTrunkConf = field(default_factory=BaselineTrunkConf)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (CUDA: bf16 where supported, else fp16 with a scaler; CPU: fp32) | bf16 | fp16 | fp32
    template_size: int = 128
    search_size: int = 320
    search_center_jitter: Optional[float] = None  # null: the data config's (STARK: 4.5)
    search_scale_jitter: Optional[float] = None  # null: the data config's (STARK: 0.5)
    num_workers: int = 4
    frozen_bn: bool = True  # STARK freezes the (ImageNet-pretrained) backbone's BN; from scratch it must train
    deterministic: bool = False  # training runs PyTorch's deterministic kernels only (an op without one fails)
    head_feature_pairs: int = 0  # head fidelity: cached trunk features for this many pairs (0: one epoch's worth)
    # head fidelity: the seed that draws the cached pairs (null: trainer.seed). Fixed, every head and every seed
    # trains on the same pairs, so seed repeats differ in head init and batch order alone (a paired design)
    feature_seed: Optional[int] = None
    report_every: int = 1  # epochs between calls of the epoch callback (a sweep's pruner reports; 0: never)

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise not_allowed(f"trainer.{name}", repr(getattr(self, name)), allowed)

        if self.fidelity not in FIDELITIES:
            fail("fidelity", f"one of {list(FIDELITIES)}")
        if self.amp not in AMP_MODES:
            fail("amp", f"one of {list(AMP_MODES)}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            fail("device", "auto, cpu, cuda or cuda:N")
        for name in ("template_size", "search_size"):
            if getattr(self, name) < STRIDE or getattr(self, name) % STRIDE:
                fail(name, f"a positive multiple of {STRIDE}")
        for name in ("search_center_jitter", "search_scale_jitter"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                fail(name, "null (the data config's) or a number >= 0")
        if self.frozen_bn and self.trunk is None and self.fidelity != "full":
            # the baseline trunk would be trained from scratch under frozen, random BN statistics: it cannot learn
            fail("trunk", "a trunk checkpoint (the official file or one of ours) when trainer.frozen_bn=true; or "
                          "trainer.frozen_bn=false to train the baseline trunk from scratch as trainer=cpu does")
        super().__post_init__()
        _check(self, "trainer", non_negative_ints=("num_workers", "head_feature_pairs", "report_every"))


QUANTIZE_MODES = ("none", "int8")  # evaluation.quantize (and the evaluate app's `quantize`)
QUANTIZE_SCOPES = ("model", "head")  # evaluation.quantize_scope: what tracker.quantize quantises


@dataclass
class EvaluationConf:
    """The online tracker (SPEC.md, Inference) and what to evaluate on."""

    # the crops' context factors are training's (data.processing.template/search.factor): one owner
    margin: int = 10  # boxes are clipped to keep this many pixels inside the image
    max_sequences: Optional[int] = None  # the first N sequences of the split (null: all)
    static_baseline: bool = True  # also score the static-box tracker on the same sequences
    # sequences tracked in lockstep, one network call per frame for all (the same boxes up to float rounding);
    # above 1, fps is throughput, not the online tracker's latency (model_latency_ms in the profile is that)
    batch_sequences: int = 1
    # int8: also quantise the model (tracker.quantize, post-training static, calibrated on data's train split) and
    # track the same sequences with it under ONNX Runtime: int8_auc, int8_auc_drop, int8/onnx_frame_latency_ms
    quantize: str = "none"  # none | int8
    quantize_scope: str = "model"  # model (trunk and head, both graphs) | head (only the head's nodes)
    calibration_crops: int = 256  # training pairs (template and search crops) that calibrate the INT8 ranges
    onnx_threads: int = 1  # ONNX Runtime's intra-op threads for the INT8 and FP32 graphs, tracking and timing

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise not_allowed("evaluation.margin", self.margin, "an integer >= 0")
        if self.batch_sequences < 1:
            raise not_allowed("evaluation.batch_sequences", self.batch_sequences, "an integer >= 1")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise not_allowed("evaluation.max_sequences", self.max_sequences, "null or >= 1")
        for name, allowed in (("quantize", QUANTIZE_MODES), ("quantize_scope", QUANTIZE_SCOPES)):
            if getattr(self, name) not in allowed:
                raise not_allowed(f"evaluation.{name}", repr(getattr(self, name)), f"one of {list(allowed)}")
        for name in ("calibration_crops", "onnx_threads"):
            if getattr(self, name) < 1:
                raise not_allowed(f"evaluation.{name}", getattr(self, name), "an integer >= 1")


@dataclass
class LatencyConf:
    """How a candidate's batch-1 latency is measured (tracker.latency): before training, on the untrained model,
    interleaved with STARK-Lightning's own head at the same sizes. No part of a run's identity: it changes no
    trained weight or score, only the latency figures."""

    RUNTIMES = ("torch", "deployed", "onnxruntime")
    runtime: str = "torch"  # torch (eager, deploy form) | deployed (the evaluation's fast path) | onnxruntime
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    threads: int = 1  # CPU threads (torch and ONNX Runtime's intra-op): 1 is the steadiest and an edge device's
    warmup: int = 10  # untimed calls of each model first
    repeats: int = 30  # timed calls per round, of the head and of the frame
    rounds: int = 5  # rounds alternate the candidate and the reference
    reference: bool = True  # time the reference too and record the candidate / reference ratios

    def __post_init__(self) -> None:
        if self.runtime not in self.RUNTIMES:
            raise not_allowed("latency.runtime", self.runtime, f"one of {list(self.RUNTIMES)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise not_allowed("latency.device", self.device, "auto, cpu, cuda or cuda:N")
        for name, low in (("threads", 1), ("warmup", 0), ("repeats", 1), ("rounds", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise not_allowed(f"latency.{name}", value, f"an integer >= {low}")


def _reject_unknown_keys(node: Any, prefix: str = "") -> None:
    """A key a typed node's schema does not have (added with `+`, which lifts struct mode) would be carried
    along and ignored: it fails instead, named."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is not None and dataclasses.is_dataclass(schema):
        allowed = [f.name for f in dataclasses.fields(schema)]
        unknown = [k for k in node.keys() if k not in allowed]
        if unknown:
            raise ConfigError(f"{prefix}{unknown[0]} is not a key of {prefix.rstrip('.') or 'the config'} "
                              f"({schema.__name__}): one of {allowed}")
    for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
        if not (OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key)):
            child = node[key]
            if OmegaConf.is_config(child):
                _reject_unknown_keys(child, f"{prefix}{key}.")


def config_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two nested dicts: what a study's
    recipe guard and a resumed run directory name when they refuse."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in config_differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


# settings that change no result: where things are written (the whole paths and logger nodes: key None), where data
# is cached, how many sequences are tracked in lockstep (the same boxes). A study's recipe and a resumed run
# directory compare without them.
NO_EFFECT = (("paths", None), ("logger", None), ("latency", None), ("data", "cache_dir"),
             ("evaluation", "batch_sequences"))


# the INT8 evaluation's settings (EvaluationConf), of no effect while evaluation.quantize is none: runs and studies
# stored before they existed have none of them and compare equal; with quantize=int8 they are all kept
INT8_SETTINGS = ("quantize", "quantize_scope", "calibration_crops", "onnx_threads")


def without_settings_of_no_effect(config: dict) -> dict:
    """A copy of a resolved config (plain dicts) without the NO_EFFECT settings (and the INT8 settings when no
    INT8 model is scored)."""
    config = json.loads(json.dumps(config, default=str))
    for group, key in NO_EFFECT:
        if isinstance(config.get(group), dict):
            (config[group] if key else config).pop(key or group, None)
    return without_unused_int8_settings(config)


def without_unused_int8_settings(config: dict) -> dict:
    """A resolved config (plain dicts, changed in place and returned) without the INT8 settings when no INT8 model
    is scored: what a trial's identity (the sweeper's duplicate key) and its recipe are computed from, so both
    match those stored before the settings existed."""
    evaluation = config.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("quantize", "none") == "none":
        for key in INT8_SETTINGS:
            evaluation.pop(key, None)
    return config


def job_config(cfg: DictConfig, drop: Sequence[str] = ("hydra",)) -> DictConfig:
    """The job's config without Hydra's own node (and any other top-level keys in `drop`): what a trial is."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k not in drop]) if any(k in cfg for k in drop) else cfg


def _check_crop_sizes(cfg: DictConfig) -> None:
    """The crops training draws are the model's input sizes: one fact, which data.processing reads from the model
    (conf/data/pairs/stark.yaml); an explicit override of one side must match the other."""
    if "model" not in cfg or "processing" not in cfg.get("data", {}):
        return
    for crop, size in (("template", "template_size"), ("search", "search_size")):
        data_size, model_size = cfg.data.processing[crop].size, cfg.model.get(size)
        if model_size is not None and data_size != model_size:
            raise not_allowed(f"data.processing.{crop}.size", data_size,
                              f"the model's model.{size}={model_size} (set trainer.{size} to change both)")


def validate(cfg: DictConfig) -> Any:
    """Runs every schema's checks (`__post_init__`) on a composed config, unknown keys included, and the checks
    across nodes; raises before any work starts."""
    _reject_unknown_keys(cfg)
    _check_crop_sizes(cfg)
    return OmegaConf.to_object(cfg)


def compose(config_name: str, overrides: Sequence[str] = (), config_dir: str | Path | None = None,
            return_hydra_config: bool = False) -> DictConfig:
    """Composes a config outside a Hydra app (tests, notebooks, the sweeper), then validates it.
    `config_dir` adds a folder to the search path, as `--config-dir` does for an app."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    if config_dir is not None:  # like `--config-dir DIR`: the primary config in DIR, groups from conf/ too
        overrides.append(f"hydra.searchpath=[file://{CONF_DIR}]")
    os.environ["LIGHTTRACK_RUNS"] = str(runs_root())  # absolute, as the apps do (tracker/app.py)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir or CONF_DIR).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    validate(job_config(cfg))
    return cfg


def compose_here(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A config composed from inside a running Hydra app (its search path holds conf/) or from outside one
    (tests, notebooks): the report uses it to read presets while it runs as `lighttrack-report`."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra import compose as hydra_compose

        return hydra_compose(config_name=config_name, overrides=list(overrides))
    return compose(config_name, overrides)


def head_preset(name: str) -> dict[str, Any]:
    """The head a `conf/head/<name>.yaml` preset composes to, every field (read without a Hydra app, so the
    report can find a grid's reference heads by what the presets say, not by a copy of them)."""
    from heads.spec import HeadSpec

    path = CONF_DIR / "head" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"head={name!r} is not a head preset: {sorted(p.stem for p in path.parent.glob('*.yaml'))}")
    values = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k != "defaults"}
    merged = OmegaConf.merge(OmegaConf.structured(HeadSpec), values)
    return OmegaConf.to_container(merged, resolve=True, enum_to_str=True)
