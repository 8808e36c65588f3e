"""The inference service: chat completions from base models and their fine-tuned adapters.

One process holds each base model once and attaches adapters on demand (PEFT multi-adapter,
bounded LRU). The API forwards ``/v1/chat/completions`` here; this package never touches the
database: the API resolves names, organizations and jobs and sends object-store locations.
"""
