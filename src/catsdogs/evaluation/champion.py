"""The champion: the registered model version the project recommends.

``models:/cats-vs-dogs@champion`` loads it. The evaluate stage moves the alias
to the model with the best test accuracy; a tie goes to the cheaper model,
meaning the one that took fewer seconds to train (then the one with fewer
parameters, then the earlier stage of the pipeline). Inside ``dvc exp run``
nothing moves an alias: the experiment's models are registered, tagged with
its name, and its evaluate only records its choice. An experiment is a trial,
and promoting it is a decision made by hand::

    python -m catsdogs.evaluation.champion show                   # versions, aliases, scores
    python -m catsdogs.evaluation.champion promote --version 7
    python -m catsdogs.evaluation.champion promote --alias fine_tune
    python -m catsdogs.evaluation.champion promote --experiment wider-head

``--experiment`` adopts a whole experiment, as after ``dvc exp apply``: each
stage it trained gets its alias on the experiment's model, and ``champion``
goes to the model the experiment's evaluate chose.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from catsdogs.core.errors import CatsDogsError
from catsdogs.core.stage_runner import run_stage
from catsdogs.core.study import dvc_stage
from catsdogs.tracking import mlflow_runs
from catsdogs.tracking.mlflow_runs import REGISTERED_MODEL_NAME, RegisteredVersion

CHAMPION_ALIAS = "champion"
# Accuracy on n photos is k / n: rounding only removes float noise, so
# accuracies tie when the same number of photos is right.
ACCURACY_PLACES = 9
# What ties a registered version to the model file evaluate scored: the
# training stage logs its metrics/training/<stage>.json summary into its run.
FINGERPRINT = ("training_seconds", "best_val_accuracy")


class ChampionError(CatsDogsError):
    """A version or alias to promote does not exist."""


@dataclass(frozen=True)
class Candidate:
    """One evaluated model, as the champion choice sees it."""

    stage: str
    test_accuracy: float
    training_seconds: float
    parameters: int
    version: str | None = None  # its registered version, if one was found


@dataclass(frozen=True)
class Choice:
    """The champion among the candidates, and why."""

    winner: Candidate
    candidates: tuple[Candidate, ...]

    @property
    def tied(self) -> tuple[Candidate, ...]:
        """The other candidates with the winner's test accuracy."""
        best = round(self.winner.test_accuracy, ACCURACY_PLACES)
        return tuple(
            c for c in self.candidates if c is not self.winner and round(c.test_accuracy, ACCURACY_PLACES) == best
        )

    @property
    def reason(self) -> str:
        """Why the winner won, e.g. "the best test accuracy, 0.962, ahead of vgg16_augmented at 0.941"."""
        w = self.winner
        text = f"the best test accuracy, {w.test_accuracy:.3f}"
        tied = self.tied
        if tied:
            names = ", ".join(c.stage for c in tied)
            others = ", ".join(f"{c.training_seconds:.0f} s for {c.stage}" for c in tied)
            text += (
                f", tied with {names}; a tie goes to the cheaper model, and {w.stage} trained in "
                f"{w.training_seconds:.0f} s against {others}"
            )
            if any(c.training_seconds == w.training_seconds for c in tied):
                text += f" (equal times: then the fewer parameters, {w.parameters:,})"
            return text
        others = sorted((c for c in self.candidates if c is not w), key=lambda c: c.test_accuracy, reverse=True)
        if others:
            text += f", ahead of {others[0].stage} at {others[0].test_accuracy:.3f}"
        return text


def choose_champion(candidates: Sequence[Candidate]) -> Choice:
    """Picks the model with the best test accuracy; a tie goes to the cheaper one.

    Cheaper means fewer training seconds, then fewer parameters; if both are
    equal the earlier candidate (pipeline order) wins.

    Args:
        candidates: the evaluated models, in pipeline order.

    Returns:
        The choice, with every candidate.

    Raises:
        ValueError: there are no candidates.
    """
    if not candidates:
        raise ValueError("no candidates to choose a champion from")
    position = {id(c): i for i, c in enumerate(candidates)}
    winner = min(
        candidates,
        key=lambda c: (-round(c.test_accuracy, ACCURACY_PLACES), c.training_seconds, c.parameters, position[id(c)]),
    )
    return Choice(winner=winner, candidates=tuple(candidates))


def stage_version(
    stage: str,
    summary: Mapping[str, object],
    versions: Sequence[RegisteredVersion],
    run_metrics: Callable[[str], Mapping[str, float]],
) -> RegisteredVersion | None:
    """Finds the registered version of the model a stage's summary describes.

    Usually the alias ``@<stage>``. But inside ``dvc exp run`` the alias stays
    on the workspace's model while the experiment evaluates the one it trained,
    so the version must also have logged the summary's :data:`FINGERPRINT`
    values; failing that, the newest version of the stage that did is taken.

    Args:
        stage: the model stage.
        summary: its ``metrics/training/<stage>.json``.
        versions: every registered version (see :func:`catsdogs.tracking.mlflow_runs.registered_versions`).
        run_metrics: returns a run's metrics by run id.

    Returns:
        The version, or None if none logged the summary.
    """
    expected = {key: float(summary[key]) for key in FINGERPRINT if summary.get(key) is not None}

    def logged_this_summary(version: RegisteredVersion) -> bool:
        if version.run_id is None:
            return False
        logged = run_metrics(version.run_id)
        return all(key in logged and math.isclose(logged[key], value, abs_tol=1e-6) for key, value in expected.items())

    aliased = [v for v in versions if stage in v.aliases]
    newest_first = [v for v in reversed(versions) if v.stage == stage and v not in aliased]
    return next((v for v in (*aliased, *newest_first) if logged_this_summary(v)), None)


def promotion_note(choice: Choice, experiment: str | None) -> str:
    """Says what happened to the ``champion`` alias, for the report and the log.

    Args:
        choice: the champion choice.
        experiment: the ``dvc exp run`` experiment name, or None.

    Returns:
        One or two sentences, with the command that promotes by hand when
        the alias was not moved.
    """
    winner = choice.winner
    if winner.version is None:
        return (
            f"No registered version of {REGISTERED_MODEL_NAME} holds the {winner.stage} model that was "
            f"evaluated (none logged its training summary), so the alias `{CHAMPION_ALIAS}` was not moved; "
            f"run `dvc repro --force {dvc_stage(winner.stage)}` to retrain and register it."
        )
    if experiment is not None:
        return (
            f"This ran inside `dvc exp run` (experiment {experiment}), so the alias `{CHAMPION_ALIAS}` was "
            f"not moved; to promote this model: `python -m catsdogs.evaluation.champion promote --version {winner.version}`, "
            f"or the whole experiment (after `dvc exp apply {experiment}`): "
            f"`python -m catsdogs.evaluation.champion promote --experiment {experiment}`."
        )
    return (
        f"The alias `{CHAMPION_ALIAS}` now points to {REGISTERED_MODEL_NAME} version {winner.version} "
        f"(`models:/{REGISTERED_MODEL_NAME}@{CHAMPION_ALIAS}`)."
    )


def describe(version: RegisteredVersion) -> str:
    """E.g. ``"7 (fine_tune; @champion, @fine_tune)"``."""
    aliases = ", ".join(f"@{a}" for a in version.aliases)
    details = "; ".join(part for part in (version.stage or "", aliases) if part)
    return f"{version.version} ({details})" if details else version.version


def resolve_version(
    versions: Sequence[RegisteredVersion], *, version: str | None = None, alias: str | None = None
) -> RegisteredVersion:
    """Finds a registered version by number or by alias.

    Args:
        versions: every registered version.
        version: a version number, e.g. ``"7"``.
        alias: an alias, e.g. ``"fine_tune"`` (a leading ``@`` is allowed).

    Returns:
        The version.

    Raises:
        ChampionError: no such version or alias; the message lists what exists.
    """
    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version and alias")
    existing = ", ".join(describe(v) for v in versions) or "none"
    if version is not None:
        found = [v for v in versions if v.version == str(version).strip()]
        if not found:
            raise ChampionError(
                f"{REGISTERED_MODEL_NAME} has no version {version}; existing versions: {existing}"
            )
        return found[0]
    alias = alias.lstrip("@")
    found = [v for v in versions if alias in v.aliases]
    if not found:
        aliases = ", ".join(sorted(f"@{a}" for v in versions for a in v.aliases)) or "none"
        raise ChampionError(f"{REGISTERED_MODEL_NAME} has no alias @{alias}; existing aliases: {aliases}")
    return found[0]


def promote(*, version: str | None = None, alias: str | None = None, root: Path | None = None) -> RegisteredVersion:
    """Moves the ``champion`` alias to a version, by hand.

    Args:
        version: the version number to promote.
        alias: or the alias of the version to promote, e.g. ``"fine_tune"``.
        root: the project whose MLflow store is used; found from the current
            directory by default (``MLFLOW_TRACKING_URI`` overrides the store).

    Returns:
        The promoted version.

    Raises:
        ChampionError: nothing is registered, or the version or alias does not exist.
        catsdogs.tracking.mlflow_runs.TrackingError: the store cannot be reached.
    """
    uri = mlflow_runs.use_store(root)
    versions = mlflow_runs.registered_versions()
    if not versions:
        raise ChampionError(
            f"no version of {REGISTERED_MODEL_NAME} is registered in {uri}; run `dvc repro` to train and register models"
        )
    target = resolve_version(versions, version=version, alias=alias)
    mlflow_runs.set_model_alias(CHAMPION_ALIAS, target.version)
    return target


def promote_experiment(experiment: str, root: Path | None = None) -> dict[str, RegisteredVersion]:
    """Moves the aliases to a DVC experiment's models, by hand.

    Each stage the experiment trained gets ``@<stage>`` on its newest version
    registered by the experiment; ``@champion`` goes to the version the
    experiment's evaluate chose, if evaluate ran in it.

    Args:
        experiment: the experiment's name, as ``dvc exp show`` lists it.
        root: the project whose MLflow store is used; found from the current
            directory by default.

    Returns:
        ``{alias: version}`` of every alias moved.

    Raises:
        ChampionError: the experiment registered no model and has no parent run.
        catsdogs.tracking.mlflow_runs.TrackingError: the store cannot be reached.
    """
    uri = mlflow_runs.use_store(root)
    versions = mlflow_runs.registered_versions()
    moves = {v.stage: v for v in versions if v.experiment == experiment and v.stage}  # oldest first: the newest wins
    parent = mlflow_runs.experiment_parent_tags(experiment)
    chosen = (parent or {}).get("champion.version", "none")
    if chosen != "none":
        moves[CHAMPION_ALIAS] = resolve_version(versions, version=chosen)
    if not moves:
        known = sorted({v.experiment for v in versions if v.experiment})
        raise ChampionError(
            f"experiment {experiment!r} registered no model and chose no champion in {uri}; "
            f"experiments with registered models: {', '.join(known) or 'none'}"
        )
    for alias, version in moves.items():
        mlflow_runs.set_model_alias(alias, version.version)
    return moves


def version_table(versions: Sequence[RegisteredVersion], run_metrics: Callable[[str], Mapping[str, float]]) -> str:
    """Formats the versions with their stage, aliases and validation and test accuracy."""
    lines = [f"{'version':>7}  {'stage':<16} {'best_val_acc':>12} {'test_acc':>8}  {'experiment':<14} aliases"]
    for v in versions:
        logged = run_metrics(v.run_id) if v.run_id else {}
        val = logged.get("best_val_accuracy")
        test = logged.get("test_accuracy")
        lines.append(
            f"{v.version:>7}  {v.stage or '?':<16} {'' if val is None else f'{val:.3f}':>12} "
            f"{'' if test is None else f'{test:.3f}':>8}  {v.experiment or '-':<14} "
            f"{' '.join('@' + a for a in v.aliases)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The ``python -m catsdogs.evaluation.champion`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs.evaluation.champion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("show", help="list the registered versions, their aliases and accuracies")
    promote_parser = commands.add_parser("promote", help=f"move the @{CHAMPION_ALIAS} alias to a version")
    which = promote_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="the version number, e.g. 7")
    which.add_argument("--alias", help="the alias of the version, e.g. fine_tune")
    which.add_argument(
        "--experiment", help="a DVC experiment's name: its models take their stages' aliases, its champion @champion"
    )
    args = parser.parse_args(argv)

    if args.command == "show":
        uri = mlflow_runs.use_store()
        versions = mlflow_runs.registered_versions()
        if not versions:
            print(f"no version of {REGISTERED_MODEL_NAME} is registered in {uri}")
            return
        print(version_table(versions, mlflow_runs.run_metrics))
        return
    if args.experiment:
        moved = promote_experiment(args.experiment)
        for alias, version in moved.items():
            print(f"{REGISTERED_MODEL_NAME}@{alias} -> version {version.version} ({version.stage or 'unknown stage'})")
        if CHAMPION_ALIAS not in moved:
            print(f"@{CHAMPION_ALIAS} not moved: evaluate did not run in experiment {args.experiment}")
        return
    target = promote(version=args.version, alias=args.alias)
    print(f"{REGISTERED_MODEL_NAME}@{CHAMPION_ALIAS} -> version {target.version} ({target.stage or 'unknown stage'})")


if __name__ == "__main__":
    run_stage("champion", main)
