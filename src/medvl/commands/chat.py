"""``medvl chat MODEL [--image FILE ...] [--volume FILE ...]``: multi-turn chat in the terminal.

The media are attached to the first user turn (one ``<image>`` / ``<volume>`` marker each, unless
the text already has markers). ``--prompt`` answers one question and exits (scriptable); otherwise
an interactive loop runs until ``/exit`` (``/reset`` starts a new conversation with the same media).

Answers are printed as they are generated (``medvl.inference.stream_chat``). Each image and volume is
read and encoded once (``medvl.inference.encode_media``) and its encoder output reused on every turn.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from typing import TextIO

HELP = "chat with a model about images / volumes (interactive, multi-turn)"

logger = logging.getLogger(__name__)


def _check_markers(messages: list[dict[str, str]], n_images: int, n_volumes: int) -> None:
    """One ``<image>`` / ``<volume>`` marker per ``--image`` / ``--volume`` over the conversation."""
    from medvl.data.records import IMAGE_MARKER, VOLUME_MARKER

    for marker, flag, given in ((IMAGE_MARKER, "--image", n_images), (VOLUME_MARKER, "--volume", n_volumes)):
        found = sum(m["content"].count(marker) for m in messages if m["role"] == "user")
        if found != given:
            raise ValueError(
                f"the conversation has {found} {marker} marker(s) but {flag} was given {given} time(s); "
                f"give one {flag} per {marker} marker (or no marker: they are added for you)"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl chat``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder")
    parser.add_argument("--image", action="append", default=[], metavar="FILE", help="2D image (repeatable)")
    parser.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="PATH",
        help="3D volume: NIfTI, DICOM folder, .npy/.npz (repeatable)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="non-interactive: user turn(s) to answer in order, then exit (repeatable)",
    )
    parser.add_argument("--system", help="system prompt (default: the chat template's)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--num-beams", type=int)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device")


def attach_media(text: str, n_images: int, n_volumes: int) -> str:
    """Prefix the first user turn with one marker per attached file unless it already has markers.

    Args:
        text: the user's first message.
        n_images: attached images.
        n_volumes: attached volumes.
    """
    if "<image>" in text or "<volume>" in text:
        return text
    markers = "<image>\n" * n_images + "<volume>\n" * n_volumes
    return markers + text


def print_stream(deltas: Iterable[str], out: TextIO, prefix: str = "") -> str:
    """Write streamed text deltas as they arrive; returns the whole answer, stripped.

    Leading whitespace is dropped and trailing whitespace held back until more text follows, so the
    printed line equals the stripped answer.

    Args:
        deltas: text pieces (``stream_chat``).
        out: the stream to write to (flushed after every piece).
        prefix: written before the first piece (e.g. ``"model> "``).
    """
    out.write(prefix)
    pieces: list[str] = []
    pending = ""  # whitespace not yet written: it may turn out to be the answer's trailing whitespace
    started = False
    for delta in deltas:
        pieces.append(delta)
        text = pending + delta
        if not started:
            text = text.lstrip()
            started = bool(text)
        body = text.rstrip()
        pending = text[len(body) :]
        if body:
            out.write(body)
            out.flush()
    out.write("\n")
    out.flush()
    return "".join(pieces).strip()


def run(args: argparse.Namespace) -> int:
    """Run the chat loop.

    Args:
        args: parsed arguments.
    """
    from medvl.commands.infer import generation_options
    from medvl.errors import MedVLDataError
    from medvl.inference import encode_media, load_model, stream_chat

    model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
    options = dict(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        do_sample=args.do_sample,
        **generation_options(args),
    )
    try:
        # Encoded once here; every turn (and /reset) reuses the encoder outputs.
        images, volumes = encode_media(model, processor, images=args.image, volumes=args.volume)
    except MedVLDataError as err:
        logger.error("%s", err)
        return 2
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(base)
    scripted = list(args.prompt or [])
    interactive = not scripted
    if interactive:
        print("medvl chat: /reset starts over, /exit quits", file=sys.stderr)
    while True:
        if scripted:
            text = scripted.pop(0)
        elif not interactive:
            return 0
        else:
            try:
                text = input("you> ").strip()
            except EOFError:
                return 0
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                messages = list(base)
                continue
            if not text:
                continue
        if not any(m["role"] == "user" for m in messages):
            text = attach_media(text, len(images), len(volumes))
        messages.append({"role": "user", "content": text})
        _check_markers(messages, len(args.image), len(args.volume))
        try:
            deltas = stream_chat(model, processor, messages, images=images, volumes=volumes, **options)
            reply = print_stream(deltas, sys.stdout, prefix="model> " if interactive else "")
        except MedVLDataError as err:
            logger.error("%s", err)
            return 2
        messages.append({"role": "assistant", "content": reply})
