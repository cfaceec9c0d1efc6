"""Trains one model of the study and records it: its MLflow run, model, metrics and learning curves.

The model's name picks what runs (``catsdogs.core.study`` lists the six);
``--features`` is vgg16_bottleneck's output, which the VGG16 models read;
``--models`` holds the earlier models a warm start reads.

Usage (as dvc.yaml runs it)::

    python stages/train.py scratch_cnn --params params.yaml --data data/small --models models \
        --model models/scratch_cnn.keras --metrics metrics/training/scratch_cnn.json --plots plots/scratch_cnn
    python stages/train.py fine_tune --params params.yaml --data data/small --models models \
        --features data/features --model models/fine_tune.keras --metrics metrics/training/fine_tune.json \
        --plots plots/fine_tune
"""

from pathlib import Path

from catsdogs.core.config import load_params
from catsdogs.core.stage_runner import run_stage
from catsdogs.core.study import NAMES
from catsdogs.training.model_stage import model_stage_arguments
from catsdogs.training.train_model import train_model


def main() -> None:
    args = model_stage_arguments(
        __doc__,
        positional=[("name", NAMES, "the model to train")],
        extra=[("--models", Path, "folder of the earlier stages' .keras models")],
        optional=[("--features", Path, "vgg16_bottleneck's output folder (the VGG16 models)")],
    )
    run_stage(args.name, lambda: train_model(
        args.name, load_params(args.params), data_dir=args.data, outputs=args.outputs,
        models_dir=args.models, features_dir=args.features,
    ))


if __name__ == "__main__":
    main()
