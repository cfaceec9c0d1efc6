"""catsdogs: the cats vs. dogs transfer-learning study as a DVC pipeline."""

__version__ = "0.1.0"
