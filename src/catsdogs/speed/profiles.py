"""Named sets of parameter overrides, such as the chapter's own settings.

A profile is ``profiles/<name>.yaml``: sections and keys of params.yaml with
the values to use instead. It runs as a DVC experiment, so params.yaml stays
the default and ``dvc exp show`` puts the profile's run beside the others::

    python -m catsdogs.speed.profiles book            # estimate, then dvc exp run -S ...
    python -m catsdogs.speed.profiles book --dry-run  # print the command only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from catsdogs.core.errors import CatsDogsError
from catsdogs.core.profile_params import available_profiles, load_params_with_profile, load_profile

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
        from catsdogs.speed.estimate import print_estimate

        print_estimate(params)
    print("$ " + " ".join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
