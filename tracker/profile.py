"""The whole tracker's profile: `python -m tracker.profile head=dsconv head.num_blocks=3`, or
`python -m tracker.profile checkpoint=PATH` for a trained model (ours, or STARK's official file).

Parameters and MACs with fvcore on the deploy form (RepVGG branches reparameterised, BN folded), attention
matmuls included, at the configured sizes; latency of the head and of the per-frame search branch on the
`latency` group's runtime (tracker.latency: median and p90, interleaved with STARK-Lightning's own head).
"""
from __future__ import annotations

import json
import logging
from typing import Any

import torch
from torch import nn

from heads.cost import count_macs, count_params, deploy_copy, profile_head

from .latency import (Latency, build_with_head, candidate_latency, measure_latency, median_latency_ms, reference_head,
                      resolve_device)

__all__ = ["profile_model", "format_table", "median_latency_ms", "resolve_device"]

log = logging.getLogger(__name__)


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
def profile_model(model: nn.Module, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Parameters and MACs of a tracker exposing `encode_template`, `track`, `head`, `template_size`,
    `search_size` (latency is `tracker.latency`'s: known before training, measured against a reference)."""
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
    return {
        **head,
        "model_params_deploy": count_params(deployed),
        "model_macs": model_macs,
        "backbone_macs": int(by_module.get("model.backbone", 0)),
        "template_macs": template_macs,
        "unsupported_ops": sorted(set(unsupported) | set(template_unsupported) | set(head_unsupported)),
        "feature_size": feat,
        "device": str(device),
    }


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
    if "frame_latency_ms" in profile:
        where = f"{profile['latency_runtime']}, {profile['latency_device']}, {profile['latency_threads']} thread(s)"
        rows += [("latency measured on", where),
                 ("head latency, median / p90", f"{profile['head_latency_ms']:.3f} / "
                                                f"{profile['head_latency_p90_ms']:.3f} ms"),
                 ("search branch latency, median / p90", f"{profile['frame_latency_ms']:.3f} / "
                                                         f"{profile['frame_latency_p90_ms']:.3f} ms"),
                 ("head share of the frame", f"{100 * profile['head_latency_share']:.1f} %"),
                 ("spread of per-round medians", f"{100 * profile['frame_latency_spread']:.1f} %")]
        if "frame_latency_ratio" in profile:
            rows.append(("frame time / with STARK-Lightning's head", f"{profile['frame_latency_ratio']:.3f}"))
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
    profile = profile_model(model, device)
    if cfg.timed:
        conf = OmegaConf.to_object(cfg.latency)
        if cfg.checkpoint:  # the checkpoint's own model, timed against the reference head at its sizes
            reference = build_with_head(model_cfg.model, reference_head()) if conf.reference else None
            latency: Latency = measure_latency(model, conf, reference)
        else:
            latency = candidate_latency(cfg, conf)
        profile.update(latency.figures())
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
