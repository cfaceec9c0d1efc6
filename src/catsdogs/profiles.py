"""Named sets of parameter overrides, such as the chapter's own settings.

A profile is ``profiles/<name>.yaml``: sections and keys of params.yaml with
the values to use instead. It runs as a DVC experiment, so params.yaml stays
the default and ``dvc exp show`` puts the profile's run beside the others::

    python -m catsdogs.profiles book            # estimate, then dvc exp run -S ...
    python -m catsdogs.profiles book --dry-run  # print the command only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from catsdogs.config import Params, ParamsError, load_params, parse_params
from catsdogs.errors import CatsDogsError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"


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


def set_arguments(profile: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``dvc exp run`` options setting every value of the profile."""
    args: list[str] = []
    for section, keys in profile.items():
        for key, value in keys.items():
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            args += ["-S", f"{section}.{key}={text}"]
    return args


def experiment_command(name: str, profile: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The ``dvc exp run`` command line of a profile, named ``<name>-<date>-<time>``."""
    return ["dvc", "exp", "run", "-n", f"{name}-{time.strftime('%Y%m%d-%H%M')}", *set_arguments(profile)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help=f"one of: {', '.join(available_profiles())}")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="print the estimate and the command, run nothing")
    parser.add_argument("--no-estimate", action="store_true", help="skip the duration estimate")
    args = parser.parse_args(argv)
    try:
        params = load_params_with_profile(args.params, args.profile)
        command = experiment_command(args.profile, load_profile(args.profile))
    except CatsDogsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.no_estimate:
        from catsdogs.estimate import print_estimate

        print_estimate(params)
    print("$ " + " ".join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
