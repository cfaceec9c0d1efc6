"""Profiles: named sets of overrides of params.yaml (``profiles/<name>.yaml``), read and applied.

The estimate and the profile runner both need a profile's parameters, so
reading them lives here, below both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from catsdogs.core.config import Params, ParamsError, load_params, parse_params
from catsdogs.core.errors import CatsDogsError

PROFILES_DIR = Path(__file__).resolve().parents[3] / "profiles"


class ProfileError(CatsDogsError):
    """A profile is missing or names a parameter params.yaml does not have."""


def available_profiles(directory: Path = PROFILES_DIR) -> list[str]:
    return sorted(path.stem for path in Path(directory).glob("*.yaml"))


def load_profile(name: str, directory: Path = PROFILES_DIR) -> dict[str, dict[str, Any]]:
    """Reads ``<directory>/<name>.yaml``: ``{section: {key: value}}``."""
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_profiles(directory)) or "none"
        raise ProfileError(f"{path}: no such profile (profiles: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ProfileError(f"{path}: must map sections of params.yaml to their keys and values")
    return {section: dict(keys) for section, keys in raw.items()}


def apply_profile(raw_params: Mapping[str, Any], profile: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """params.yaml's contents with the profile's values in place (a new dict).

    Raises:
        ProfileError: the profile sets a section or key params.yaml lacks.
    """
    merged = {section: dict(keys) if isinstance(keys, Mapping) else keys for section, keys in raw_params.items()}
    for section, keys in profile.items():
        if section not in merged or not isinstance(merged[section], dict):
            raise ProfileError(f"profile sets {section}, which is not a section of params.yaml")
        for key, value in keys.items():
            if key not in merged[section]:
                raise ProfileError(f"profile sets {section}.{key}, which params.yaml does not have")
            merged[section][key] = value
    return merged


def load_params_with_profile(params_path: Path, profile: str | None, directory: Path = PROFILES_DIR) -> Params:
    """The validated parameters of params.yaml, with a profile applied when named."""
    if profile is None:
        return load_params(params_path)
    raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    try:
        return parse_params(apply_profile(raw, load_profile(profile, directory)))
    except ParamsError as err:
        raise ProfileError(f"profile {profile}: {err}") from err
