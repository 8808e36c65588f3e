"""Models: the catalogue of base and fine-tuned models, and operator registration of base models."""
