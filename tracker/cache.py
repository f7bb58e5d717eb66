"""What trials share through the runs root: the baseline trunk head trials start from, and the trunk features
head trials train on. Each is keyed by what decides its content (`config_key`), built once under `file_lock`
(a second process waits for the first instead of building it again) and written atomically, so a process killed
while building leaves nothing half-written."""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from .config import recipe_identity, runs_root
from .io import atomic_path, file_lock, stable_hash
from .version import MODEL_VERSION

if TYPE_CHECKING:
    from torch.utils.data import TensorDataset

    from .model import StarkLightning
    from .train import Trial

log = logging.getLogger(__name__)

SHIPPED_TRUNKS = Path(__file__).resolve().parents[1] / "assets" / "trunks"  # `make trunk` writes <key>.pt here


def config_key(*nodes: Any) -> str:
    """The cache key of resolved config nodes (and plain values)."""
    return stable_hash([OmegaConf.to_container(n, resolve=True, enum_to_str=True) if OmegaConf.is_config(n) else n
                        for n in nodes])


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def trunk_digest(model: StarkLightning) -> str:
    """A hash of the trunk's weights: cached features are valid for exactly these."""
    from .model import TRUNK_PREFIXES

    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name.startswith(TRUNK_PREFIXES):
            digest.update(name.encode())
            digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def trunk_features(trial: Trial, model: StarkLightning, trunk: str, split: str, pairs: int) -> TensorDataset:
    """Trunk outputs (the head's input) and target corners for a fixed set of pairs, computed once and kept
    under <runs>/features/, keyed by the trunk weights' digest, what decides the pairs (readers, sampling, crops),
    the pair count, the seed and the model version."""
    import torch
    from torch.utils.data import TensorDataset
    from torchvision.ops import box_convert
    from tqdm.auto import tqdm

    from .data import pairs_key
    from .train import trial_data

    t = trial.t
    seed = t.seed if t.feature_seed is None else t.feature_seed
    key = config_key(pairs_key(trial_data(trial.cfg), split), trunk, split, pairs, seed, MODEL_VERSION)
    path = runs_root() / "features" / f"{split}-{key}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            features, target = torch.load(path, weights_only=True)
            return TensorDataset(features, target)
        log.info("trunk features (%s, %d pairs): none cached under key %s, computing them once", split, pairs, key)
        loader = trial.pair_loader(split, pairs, seed + (0 if split == "train" else 7919))
        model.eval()
        chunks, targets = [], []
        with torch.no_grad():
            for batch in tqdm(loader, desc=f"trunk features ({split}, key {key[:8]})", unit="batch", leave=False,
                              disable=not trial.progress):
                batch = {k: v.to(trial.device) for k, v in batch.items()}
                template = model.encode_template(batch["template"], batch["template_mask"])
                chunks.append(model.search_features(batch["search"], batch["search_mask"], template).half().cpu())
                targets.append(box_convert(batch["search_box"], "xywh", "xyxy").cpu())
        features, target = torch.cat(chunks), torch.cat(targets)
        with atomic_path(path) as tmp:
            torch.save((features, target), tmp)
    return TensorDataset(features, target)


def baseline_trunk_config(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The full baseline (RepVGG head) run a preset's head trials start from, and its cache key (model sizes
    and BN, the training pairs, the recipe `trainer.baseline_trunk`, the model version)."""
    from heads.spec import HeadSpec

    from .data import pairs_key
    from .train import trial_data

    trunk_cfg = copy.deepcopy(cfg)  # struct mode stays on: a misspelt key here fails
    trunk_cfg.head = OmegaConf.structured(HeadSpec())
    t, recipe = trunk_cfg.trainer, OmegaConf.to_container(trunk_cfg.trainer.baseline_trunk, resolve=True)
    generate = recipe.pop("generate", None) or {}
    trunk_cfg.data.generate.update(generate)  # its training data only: the evaluated split is the trials'
    t.update({**recipe, "fidelity": "full", "trunk": None})
    key = config_key(trunk_cfg.model, trunk_cfg.head, pairs_key(trial_data(trunk_cfg), "train"),  # model: sizes, BN
                     recipe_identity(recipe), MODEL_VERSION)
    return trunk_cfg, key


def ensure_baseline_trunk(cfg: DictConfig, progress: bool = True) -> Path:
    """The trunk head trials start from when none is given, cached under <runs>/trunks/<key>/: the one shipped in
    assets/trunks/<key>.pt when there is one (`make trunk`), else trained once on this data at this preset's sizes
    (an interrupted trunk run resumes)."""
    from .model.checkpoint import load_checkpoint, save_checkpoint
    from .train import Trial

    trunk_cfg, key = baseline_trunk_config(cfg)
    directory = runs_root() / "trunks" / key
    final = directory / "trunk.pt"
    with file_lock(directory / ".lock"):
        if final.is_file():
            return final
        shipped = SHIPPED_TRUNKS / f"{key}.pt"
        if shipped.is_file():
            log.info("baseline trunk %s: using the shipped one, %s (provenance: %s)", key, shipped,
                     shipped.with_suffix(".json").name)
            state = load_checkpoint(shipped)
            save_checkpoint(final, model={k: v.float() if v.is_floating_point() else v
                                          for k, v in state["model"].items()}, config=state["config"])
            return final
        log.info("baseline trunk %s: none cached in %s and none shipped in %s, so it is trained now, once (%d "
                 "epochs; `make trunk` ships one)", key, directory.parent, SHIPPED_TRUNKS, trunk_cfg.trainer.epochs)
        OmegaConf.save(trunk_cfg, directory / "config.yaml")
        model = Trial(trunk_cfg, directory, progress=progress).train()
        save_checkpoint(final, model=model.state_dict(), config=OmegaConf.to_container(trunk_cfg, resolve=True,
                                                                                        enum_to_str=True))
    return final
