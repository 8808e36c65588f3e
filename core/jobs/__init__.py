"""A fine-tuning job's life: status, lifecycle services, hyperparameters, checkpoints,
progress, estimates."""
