"""Training: presets (YAML run configs) and the Lightning training run."""

from covid_cxr.training.presets import PresetInfo, dump_config, list_presets, load_config, load_preset

__all__ = ["PresetInfo", "dump_config", "list_presets", "load_config", "load_preset"]
