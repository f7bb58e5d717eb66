"""The whole tracker's profile: `python -m tracker.profile head=dsconv head.num_blocks=3`, or
`python -m tracker.profile checkpoint=PATH` for a trained model (ours, or STARK's official file).

Parameters and MACs with fvcore on the deploy form (RepVGG branches reparameterised, BN folded), attention
matmuls included, at the configured sizes; latency of the head and of the per-frame search branch.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import torch
from torch import nn

from heads.cost import count_macs, count_params, deploy_copy, profile_head

log = logging.getLogger(__name__)

LATENCY_BLOCKS = 5  # the timed calls are split into at most this many blocks, each a sample of the median


@torch.no_grad()
def median_latency_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 10, repeats: int = 50) -> float:
    """Median time of one `fn()` call in ms, by `torch.utils.benchmark.Timer`, which synchronises the accelerator
    (`device`'s, if any) around what it times: `warmup` calls, then `repeats` timed calls (rounded down to a
    multiple of the block count) in up to `LATENCY_BLOCKS` equal blocks, each after the Timer's own untimed
    warm-up calls (two for blocks under 300 calls). Each block gives one per-call time (block time / calls); the
    median of those is robust to a block disturbed by other work, and no synchronisation is charged to each call."""
    from torch.utils.benchmark import Measurement, Timer  # imported when timing: it loads the C++ extension tools

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    for _ in range(warmup):
        fn()
    blocks = min(repeats, LATENCY_BLOCKS)
    measurement, = Measurement.merge(timer.timeit(repeats // blocks) for _ in range(blocks))
    return measurement.median * 1e3


class _SearchBranch(nn.Module):
    """The per-frame work: search crop against cached template tokens (captured as constants)."""

    def __init__(self, model: nn.Module, template: Any):
        super().__init__()
        self.model, self.template = model, template

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.track(image, mask, self.template)["boxes"]


class _TemplateBranch(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode_template(image, mask))


@torch.no_grad()
def profile_model(model: nn.Module, device: torch.device | str = "cpu", latency: bool = True, warmup: int = 10,
                  repeats: int = 50) -> dict[str, Any]:
    """Full profile of a tracker exposing `encode_template`, `track`, `head`, `template_size`, `search_size`."""
    device = torch.device(device)
    deployed = deploy_copy(model).to(device)
    in_channels, feat = deployed.encoder.linear2.out_features, deployed.search_feat
    head = profile_head(model.head, in_channels, feat)
    zs, xs = deployed.template_size, deployed.search_size
    z = torch.zeros(1, 3, zs, zs, device=device)
    z_mask = torch.zeros(1, zs, zs, dtype=torch.bool, device=device)
    x = torch.zeros(1, 3, xs, xs, device=device)
    x_mask = torch.zeros(1, xs, xs, dtype=torch.bool, device=device)
    template = deployed.encode_template(z, z_mask)
    search = _SearchBranch(deployed, template)
    model_macs, by_module, unsupported = count_macs(search, (x, x_mask))
    template_macs, _, template_unsupported = count_macs(_TemplateBranch(deployed), (z, z_mask))
    head_unsupported = head.pop("head_unsupported_ops")
    result: dict[str, Any] = {
        **head,
        "model_params_deploy": count_params(deployed),
        "model_macs": model_macs,
        "backbone_macs": int(by_module.get("model.backbone", 0)),
        "template_macs": template_macs,
        "unsupported_ops": sorted(set(unsupported) | set(template_unsupported) | set(head_unsupported)),
        "feature_size": feat,
        "device": str(device),
    }
    if latency:
        head_in = torch.zeros(1, in_channels, feat, feat, device=device)
        result["head_latency_ms"] = median_latency_ms(lambda: deployed.head(head_in), device, warmup, repeats)
        result["model_latency_ms"] = median_latency_ms(lambda: search(x, x_mask), device, warmup, repeats)
    return result


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available here (no CUDA); use device=cpu or device=auto")
    return torch.device(name)


def format_table(profile: dict[str, Any]) -> str:
    rows = [
        ("head params (training form)", f"{profile['head_params']:,}"),
        ("head params (deploy form)", f"{profile['head_params_deploy']:,}"),
        ("head MACs", f"{profile['head_macs']:,}  ({profile['head_macs'] / 1e6:.2f} M)"),
        ("model params (deploy form)", f"{profile['model_params_deploy']:,}"),
        ("search branch MACs / frame", f"{profile['model_macs']:,}  ({profile['model_macs'] / 1e9:.3f} G)"),
        ("  of it backbone", f"{profile['backbone_macs']:,}  ({profile['backbone_macs'] / 1e9:.3f} G)"),
        ("template branch MACs (once)", f"{profile['template_macs']:,}"),
        ("ops fvcore did not count", ", ".join(profile["unsupported_ops"]) or "none"),
    ]
    if "head_latency_ms" in profile:
        rows += [(f"head latency ({profile['device']}, median)", f"{profile['head_latency_ms']:.3f} ms"),
                 (f"search branch latency ({profile['device']}, median)", f"{profile['model_latency_ms']:.3f} ms")]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _main(cfg) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    OmegaConf.to_object(cfg)  # schema checks before building anything
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if cfg.checkpoint:
        from .evaluation import load_model

        model, model_cfg = load_model(cfg.checkpoint)
        log.info("profiling %s; the head and model overrides are ignored: the checkpoint's own model is used",
                 cfg.checkpoint)
        head = model_cfg.head
    else:
        model, head = instantiate(cfg.model), cfg.head
    profile = profile_model(model, device, latency=cfg.latency.enabled, warmup=cfg.latency.warmup,
                            repeats=cfg.latency.repeats)
    profile["head"] = OmegaConf.to_container(head, resolve=True, enum_to_str=True)
    if cfg.checkpoint:
        profile["checkpoint"] = str(cfg.checkpoint)
    if cfg.output == "json":
        print(json.dumps(profile))
    else:
        print(format_table(profile))


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "profile")()


if __name__ == "__main__":
    main()
