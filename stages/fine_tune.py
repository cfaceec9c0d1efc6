"""Fine-tunes VGG16 from fine_tune.trainable_from (block4_conv1) on, with the head, on augmented photos.

Each epoch's validation runs the trained blocks and the head only, on the
outputs of the frozen blocks that vgg16_bottleneck saved (``--features``).

Usage (as dvc.yaml runs it)::

    python stages/fine_tune.py --params params.yaml --data data/small --features data/features --models models \
        --model models/fine_tune.keras --metrics metrics/training/fine_tune.json --plots plots/fine_tune
"""

from pathlib import Path

from catsdogs.config import load_params
from catsdogs.model_stage import model_stage_arguments
from catsdogs.stage_runner import run_stage
from catsdogs.transfer_stages import fine_tune


def main() -> None:
    args = model_stage_arguments(__doc__, extra=[
        ("--models", Path, "folder of the earlier stages' .keras models"),
        ("--features", Path, "the bottleneck features folder"),
    ])
    heads = {stage: args.models / f"{stage}.keras" for stage in ("vgg16_features", "vgg16_augmented")}
    fine_tune(load_params(args.params), data_dir=args.data, model_paths=heads, outputs=args.outputs, features_dir=args.features)


if __name__ == "__main__":
    run_stage("fine_tune", main)
