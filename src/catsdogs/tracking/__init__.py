"""MLflow: runs, the model registry, the parent run of each pipeline execution, the store's servers and copies."""
