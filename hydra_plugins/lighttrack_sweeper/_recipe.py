"""What a study and its trials are, as the sweeper compares them: a trial's identity (`config_key`: duplicates share
it) and the study's recipe (`study_recipe`: everything a trial inherits but the searched head; a study resumes only
with the recipe it was started with)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tracker.config import job_config, recipe_identity, without_settings_of_no_effect, without_unused_int8_settings
from tracker.io import stable_hash
from tracker.version import MODEL_VERSION

# a trial's identity (duplicates share it) leaves out where runs go and how latency is measured: neither changes
# what trains or how it scores
NO_PART_OF_A_TRIAL = ("hydra", "paths", "logger", "latency")


def config_key(cfg: DictConfig) -> str:
    """Identity of a trial's architecture and recipe: the resolved job config without what is no part of a trial
    (NO_PART_OF_A_TRIAL) and without the INT8 settings while no INT8 model is scored."""
    task = OmegaConf.to_container(job_config(cfg, drop=NO_PART_OF_A_TRIAL), resolve=True, enum_to_str=True)
    return stable_hash(without_unused_int8_settings(task))


def comparable_recipe(recipe: dict) -> dict:
    """A recipe as today's code writes it, without the settings that change no result: a study stored by older
    code compares equal when it trained the same way."""
    recipe = without_settings_of_no_effect(recipe)
    generate = (recipe.get("data") or {}).get("generate")
    if isinstance(generate, dict) and generate.get("sources") == "default":  # older studies predate the option
        generate.pop("sources")
    trainer = recipe.get("trainer")
    if isinstance(trainer, dict):
        if isinstance(trainer.get("baseline_trunk"), dict):
            trainer["baseline_trunk"] = recipe_identity(trainer["baseline_trunk"])
        recipe["trainer"] = recipe_identity(trainer)
    evaluation, processing = recipe.get("evaluation"), (recipe.get("data") or {}).get("processing") or {}
    for crop in ("template", "search"):  # evaluation.*_factor was a copy of data.processing.*.factor
        old = evaluation.pop(f"{crop}_factor", None) if isinstance(evaluation, dict) else None
        if old is not None and old != (processing.get(crop) or {}).get("factor"):
            evaluation[f"{crop}_factor"] = old  # it differed: a real difference, kept
    return recipe


def study_recipe(cfg: DictConfig) -> dict:
    """Everything a trial inherits but the searched head: data, model (and its code version), trainer,
    evaluation, resolved (from the config every trial starts from)."""
    task = OmegaConf.to_container(job_config(cfg), resolve=True, enum_to_str=True)
    task.pop("head", None)
    if isinstance(task.get("model"), dict):
        task["model"].pop("head", None)
    task["model_version"] = MODEL_VERSION
    return comparable_recipe(task)  # a JSON-safe copy
