"""Parameters, errors, paths and the process around a stage: what every other layer may import."""
