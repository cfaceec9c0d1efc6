"""The catsdogs command: classify photos, build serving requests, open the MLflow UI.

    catsdogs predict PHOTO_OR_FOLDER... [--model champion] [--format table|csv|json]
    catsdogs request PHOTO... [--model champion] > request.json
    catsdogs ui [--port 5000]
    catsdogs copy-store --to http://SERVER [--from sqlite:///mlruns/mlflow.db]

--model is an alias of the registered model cats-vs-dogs (champion, the best
model, or a stage: scratch_cnn, regularized_cnn, augmented_cnn, vgg16_features,
vgg16_augmented, fine_tune) or a .keras file such as models/fine_tune.keras.

Exit status: 0 when every photo was predicted, 1 when some could not be
(each is reported, the others are still predicted), 2 for a usage error
(bad arguments, unknown alias, no MLflow store yet).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from catsdogs.core.errors import CatsDogsError

if TYPE_CHECKING:  # the real import loads TensorFlow, which `--help` should not wait for
    from catsdogs.serving.predict import Prediction

PROG = "catsdogs"
FORMATS = ("table", "csv", "json")
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``catsdogs`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = (
        "alias of the registered model cats-vs-dogs (champion, or a stage name such as "
        "fine_tune) or a .keras file (default: %(default)s)"
    )

    predict = commands.add_parser(
        "predict",
        help="say whether photos show a cat or a dog",
        description="Prints file, label and P(dog), the model's probability that the photo shows "
        "a dog (label dog when P(dog) > 0.5). Folders are searched recursively for photos.",
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders of photos")
    predict.add_argument("--model", default="champion", help=model_help)
    predict.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="photos per batch (default: 32)")

    request = commands.add_parser(
        "request",
        help="write the JSON body `mlflow models serve` answers for photos",
        description='Writes {"inputs": [...]} to stdout: each photo decoded and resized like '
        "the training photos, as raw 0..255 RGB pixels.",
    )
    request.add_argument("paths", nargs="+", type=Path, metavar="PHOTO", help="photos")
    request.add_argument("--model", default="champion", help=model_help + "; gives the photo size")
    request.add_argument("--size", type=_positive_int, help="photo side in pixels, instead of asking the model")

    ui = commands.add_parser("ui", help="browse the tracked runs and registered models in the MLflow UI")
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default: %(default)s)")

    copy = commands.add_parser(
        "copy-store",
        help="copy the project's MLflow history (runs, models, aliases) into another store, e.g. the team's server",
        description="Copies every experiment, run (params, metric histories, tags, artifacts, datasets), "
        "logged model and registered model version with its aliases. Runs copied before are skipped, "
        "so running it again finishes an interrupted copy.",
    )
    copy.add_argument("--to", required=True, dest="target", metavar="URI", help="the store to write, e.g. http://127.0.0.1:5005")
    copy.add_argument("--from", dest="source", metavar="URI",
                      help="the store to read (default: the project's sqlite:///.../mlruns/mlflow.db)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``catsdogs``.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 all photos predicted, 1 some failed, 2 usage error.
    """
    args = build_parser().parse_args(argv)
    commands = {"predict": _predict, "request": _request, "ui": _ui, "copy-store": _copy_store}
    try:
        return commands[args.command](args)
    except CatsDogsError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _predict(args: argparse.Namespace) -> int:
    # Imported here: TensorFlow takes seconds to load, which `--help` should not wait for.
    from catsdogs.serving import predict
    files = predict.find_images(args.paths)
    loaded = predict.load_model(args.model)
    height, width = loaded.image_size
    print(f"{PROG} predict: model {loaded.source}, {width}x{height} photos", file=sys.stderr)
    results = predict.predict_files(loaded, files, batch_size=args.batch_size)
    for result in results:
        if result.error:
            print(f"{PROG} predict: {result.file}: {result.error}", file=sys.stderr)
    print(format_predictions(results, args.format), end="")
    return EXIT_SOME_FAILED if any(result.error for result in results) else EXIT_OK


def format_predictions(results: Sequence[Prediction], fmt: str) -> str:
    """Renders predictions as an aligned table, CSV or JSON.

    Args:
        results: one per photo, from :func:`catsdogs.serving.predict.predict_files`.
        fmt: ``table`` (file, label, P(dog) to 4 decimals, ``-`` on error),
            ``csv`` or ``json`` (``file``, ``label``, ``p_dog``, ``error``;
            empty / null where there is none).

    Returns:
        The text, ending with a newline.
    """
    rows = [
        {"file": str(r.file), "label": r.label, "p_dog": r.p_dog, "error": r.error} for r in results
    ]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["file", "label", "p_dog", "error"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    table = [("file", "label", "P(dog)")] + [
        (row["file"], row["label"], "-" if row["p_dog"] is None else f"{row['p_dog']:.4f}") for row in rows
    ]
    widths = [max(len(line[col]) for line in table) for col in range(2)]
    return "".join(
        f"{file:<{widths[0]}}  {label:<{widths[1]}}  {p:>6}\n" for file, label, p in table
    )


def _request(args: argparse.Namespace) -> int:
    from catsdogs.serving import predict
    if args.size:
        size = (args.size, args.size)
    else:
        size = predict.load_model(args.model).image_size
    try:
        body = predict.request_body(args.paths, size)
    except predict.UnreadablePhotoError as err:
        print(f"{PROG} request: {err}", file=sys.stderr)
        return EXIT_SOME_FAILED
    json.dump(body, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return EXIT_OK


def _copy_store(args: argparse.Namespace) -> int:
    from catsdogs.tracking import store_copy
    from catsdogs.tracking import mlflow_runs
    source = args.source
    if source is None:
        database = mlflow_runs.project_root() / mlflow_runs.STORE_DIR / "mlflow.db"
        if not database.is_file():
            raise store_copy.StoreCopyError(f"{database} not found: nothing to copy (give --from)")
        source = f"sqlite:///{database}"
    summary = store_copy.copy_store(source, args.target, say=lambda line: print(f"{PROG} copy-store: {line}", file=sys.stderr))
    print(f"{PROG} copy-store: {source} -> {args.target}: {summary}")
    return EXIT_OK


def _ui(args: argparse.Namespace) -> int:
    from catsdogs.tracking import mlflow_runs
    from catsdogs.serving import ui
    root = mlflow_runs.project_root()
    uri = mlflow_runs.tracking_uri(root)
    if uri.startswith(("http://", "https://")):
        # A tracking server is its own UI: nothing to start, only where to look.
        print(f"{PROG} ui: MLFLOW_TRACKING_URI is a tracking server; open {ui.server_page(uri)}", flush=True)
        return EXIT_OK
    command = ui.ui_command(root, host=args.host, port=args.port)
    base = f"http://{args.host}:{args.port}"
    experiment_id = ui.project_experiment_id(root)
    page = ui.experiment_url(base, experiment_id) if experiment_id else base
    print(f"{PROG} ui: open {page} (Ctrl-C stops the server)", file=sys.stderr, flush=True)
    # Replaces this process, so Ctrl-C and `kill` reach the server directly.
    os.execve(command[0], command, {**os.environ, **ui.UI_ENVIRONMENT})


if __name__ == "__main__":
    sys.exit(main())
