"""The two classes and the three splits, named once for every module."""

LABELS = ("cat", "dog")  # a label's index is its class number: cat = 0, dog = 1
SPLITS = ("train", "validation", "test")
