"""Using the best model: predict, the command line, the MLflow UI."""
