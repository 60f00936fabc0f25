"""``medvl serve MODEL``: an OpenAI-compatible HTTP API (chat completions with images and CT volumes).

Starts uvicorn on 127.0.0.1:8000 (``--host 0.0.0.0`` to listen on every interface), loads the model in
the background (``GET /health`` answers 503 until it is ready) and batches concurrent requests
through medvl's one inference path. ``--ui`` also mounts the Gradio web demo at ``/ui`` (the model is
then loaded before the server starts).

Example::

    medvl serve runs/medm-vl-ct --media-root /data/ct --api-key $KEY
    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/models
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor
    from medvl.serve.app import ServeConfig, UIMount

HELP = "serve a model over an OpenAI-compatible HTTP API (chat completions, images and CT volumes, streaming)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl serve``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="name in /v1/models and requests (default: the folder name)")
    parser.add_argument(
        "--media-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder file:// URLs may read from (repeatable; none: file:// is refused)",
    )
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests generated together (1: one at a time)")
    parser.add_argument(
        "--batch-wait-ms", type=float, default=0.0, help="how long the first request of a batch waits for batch mates"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $MEDVL_API_KEY)",
    )
    parser.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body (MB)")
    parser.add_argument("--max-image-pixels", type=int, default=64_000_000, help="largest image (pixels)")
    parser.add_argument("--max-volume-voxels", type=int, default=256 * 1024 * 1024, help="largest volume (voxels)")
    parser.add_argument("--max-media", type=int, default=8, help="images + volumes per request")
    parser.add_argument(
        "--default-max-tokens", type=int, default=512, help="completion limit when a request gives no max_tokens"
    )
    parser.add_argument("--ui", action="store_true", help="also serve the Gradio web demo at /ui")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: float32 on CPU")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def demo_ui(model: MedVLForConditionalGeneration, processor: MedVLProcessor, config: ServeConfig) -> UIMount:
    """The ``--ui`` page for ``create_app(ui=...)``: the Gradio web demo of the loaded model.

    The page's login password is the server's API key (a browser cannot send the bearer header);
    its upload limit is the server's request size limit.

    Args:
        model: the loaded model.
        processor: its processor.
        config: the server settings.
    """
    from medvl.tools.demo.app import mount_demo

    def mount(app: FastAPI, path: str) -> None:
        mount_demo(app, model, processor, path, password=config.api_key, max_file_size_mb=config.max_request_mb)

    return mount


def run(args: argparse.Namespace) -> int:
    """Run the server until interrupted.

    Args:
        args: parsed arguments.
    """
    from pathlib import Path

    import uvicorn

    from medvl.inference import load_model
    from medvl.serve.app import ServeConfig, create_app, model_name_of

    if not (Path(args.model) / "config.json").is_file():
        logger.error("%s: not a model folder (no config.json)", args.model)
        return 2
    for root in args.media_root:
        if not Path(root).is_dir():
            logger.error("--media-root %s: not a folder", root)
            return 2
    if args.max_batch_size < 1:
        logger.error("--max-batch-size must be >= 1")
        return 2
    config = ServeConfig(
        model_name=args.served_model_name or model_name_of(args.model),
        media_roots=list(args.media_root),
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        api_key=args.api_key or os.environ.get("MEDVL_API_KEY") or None,
        max_request_mb=args.max_request_mb,
        max_image_pixels=args.max_image_pixels,
        max_volume_voxels=args.max_volume_voxels,
        max_media=args.max_media,
        default_max_tokens=args.default_max_tokens,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)

    def load() -> tuple[MedVLForConditionalGeneration, MedVLProcessor]:
        return load_model(args.model, dtype=args.dtype, device=args.device)

    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(err: BaseException) -> None:
        failed.append(err)
        if server is not None:
            server.should_exit = True

    if args.ui:  # the demo is built around the loaded model, so load first
        model, processor = load()
        app = create_app(config, loaded=(model, processor), ui=demo_ui(model, processor, config))
    else:
        app = create_app(config, loader=load, on_load_error=stop)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, log_level="info", log_config=None, timeout_graceful_shutdown=5
        )
    )
    logger.info(
        "medvl serve: http://%s:%d (model %s, max batch %d%s)",
        args.host,
        args.port,
        config.model_name,
        config.max_batch_size,
        ", API key required" if config.api_key else "",
    )
    server.run()
    return 1 if failed else 0
