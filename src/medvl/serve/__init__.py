"""``medvl serve``: an OpenAI-compatible HTTP server for medvl models (2D images and 3D volumes).

* ``app.py``: FastAPI routes (chat completions incl. SSE streaming, models, health, metrics), auth.
* ``schema.py``: request validation and the OpenAI error format.
* ``media.py``: ``data:`` / ``file://`` media decoding with size limits and media-root confinement.
* ``scheduler.py``: batches concurrent requests through ``medvl.inference.generate_detailed``.
* ``metrics.py``: Prometheus metrics.
"""

from medvl.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
