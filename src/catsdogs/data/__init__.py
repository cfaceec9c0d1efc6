"""From the raw archive to batches: download, the small dataset, decoding, the input pipeline, augmentation."""
