r"""Scores every trained model on the test photos, compares them and names the champion.

Usage (as dvc.yaml runs it)::

    python stages/evaluate.py --params params.yaml --data data/small --models models \
        --metrics-dir metrics/training --out-metrics metrics --reports reports/evaluation \
        --out-statistics metrics/evaluation/statistics.json --features data/features --raw data/raw

``--stages scratch_cnn,fine_tune`` compares only those models (all six by
default). Outside ``dvc exp run`` the alias ``champion`` of ``cats-vs-dogs``
moves to the model with the best test accuracy; inside one it stays, and
``python -m catsdogs.evaluation.champion promote --version N`` promotes by hand.
"""

import argparse
from pathlib import Path

from catsdogs.core.config import TRAINING_STAGES, load_params
from catsdogs.core.stage_runner import run_stage
from catsdogs.evaluation.scoring import PREDICT_BATCH_SIZE, run_evaluation


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    parser.add_argument("--data", type=Path, required=True, help="the small dataset folder (test/ is scored)")
    parser.add_argument("--models", type=Path, required=True, help="folder of the <stage>.keras models")
    parser.add_argument("--metrics-dir", type=Path, required=True, help="folder of the <stage>.json training summaries")
    parser.add_argument(
        "--out-metrics", type=Path, required=True, help="folder of the headline <stage>.json metrics to write"
    )
    parser.add_argument("--reports", type=Path, required=True, help="the reports folder to write")
    parser.add_argument(
        "--features", type=Path, default=None,
        help="vgg16_bottleneck's output: the VGG16 models are scored from it instead of running their frozen layers again",
    )
    parser.add_argument(
        "--raw", type=Path, default=None,
        help="the download stage's photos: evaluate.extra_test_photos of those the small dataset did not draw are a second test set",
    )
    parser.add_argument(
        "--out-statistics", type=Path, default=None,
        help="where the intervals, calibration and paired tests go as metrics JSON (not written by default)",
    )
    parser.add_argument(
        "--stages",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(TRAINING_STAGES),
        help=f"comma-separated model stages to compare (default: {','.join(TRAINING_STAGES)})",
    )
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="photos per predict batch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    params = load_params(args.params)
    run_evaluation(
        args.stages,
        data_dir=args.data,
        models_dir=args.models,
        metrics_dir=args.metrics_dir,
        image_size=params.base.image_size,
        out_metrics_dir=args.out_metrics,
        reports_dir=args.reports,
        batch_size=args.batch_size,
        settings=params.evaluate,
        seed=params.base.seed,
        out_statistics=args.out_statistics,
        features_dir=args.features,
        raw_dir=args.raw,
    )


if __name__ == "__main__":
    run_stage("evaluate", main)
