"""``medvl demo MODEL [--host 127.0.0.1] [--port 7860]``: the web demo (Gradio) for a checkpoint.

Streamed multimodal chat, upload of 2D images and CT volumes, a CT viewer (axial, coronal, sagittal,
HU windows, radiological orientation) and a view of the tensors the model receives. It binds to
127.0.0.1 unless told otherwise; there is no public share link.
"""

from __future__ import annotations

import argparse
import logging
import signal

HELP = "web demo: chat about images and CT volumes in the browser (Gradio)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl demo``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="initial value of the page's slider")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device")
    parser.add_argument("--examples-dir", help="render the example phantoms here (default: a temporary folder)")


def run(args: argparse.Namespace) -> int:
    """Load the model and serve the page until interrupted.

    Args:
        args: parsed arguments.
    """
    from medvl.inference import load_model
    from medvl.tools.demo.app import build_demo, launch_options
    from medvl.tools.demo.examples import ExampleCases

    # SIGTERM (systemd, docker stop, a test harness) stops the server like Ctrl-C: Gradio then closes
    # it properly, deleting its copies of the uploads, and exit handlers remove the example phantoms.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
    demo = build_demo(
        model, processor, max_new_tokens=args.max_new_tokens, examples=ExampleCases(folder=args.examples_dir)
    )
    logger.info("medvl demo of %s on http://%s:%d", args.model, args.host, args.port)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        footer_links=[],
        show_error=True,
        **launch_options(),
    )
    return 0
