"""Request validation for ``POST /v1/chat/completions`` and the OpenAI error format.

The request body is checked by hand rather than by pydantic models: every problem becomes one
:class:`APIError` that names the offending parameter (``messages[0].content[1].type``) the way
OpenAI's API does, and refuses unsupported OpenAI parameters by name, instead of a 422 listing
validator internals for a union of content-part models.

What medvl accepts (everything else is a 400 that says it is unsupported):

* ``messages``: roles ``system`` / ``developer`` (as system), ``user``, ``assistant`` (text only);
  content a string or a list of parts ``{"type": "text", "text"}``,
  ``{"type": "image_url", "image_url": {"url", "window"?}}`` and medvl's
  ``{"type": "volume_url", "volume_url": {"url"}}``. Each media part becomes one ``<image>`` /
  ``<volume>`` marker in place (as the chat template renders content parts: marker then newline),
  so a request equals the native record ``"<image>\\nquestion"``. A literal marker typed in a text
  part is refused: it would not match any media.
* ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``,
  ``stream``, ``stream_options.include_usage``, ``n`` = 1, ``model``, ``user`` (ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medvl.data.records import IMAGE_MARKER, VOLUME_MARKER

# Parameters of OpenAI's API that medvl does not implement: refused by name rather than ignored,
# so a client never silently gets something other than what it asked for.
UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "parallel_tool_calls": "tool calling",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "logit_bias": "logit bias",
    "response_format": "structured output",
    "audio": "audio output",
    "modalities": "audio output",
    "prediction": "predicted outputs",
    "presence_penalty": "presence penalty",
    "frequency_penalty": "frequency penalty",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning",
}
IGNORED = {"user", "store", "metadata", "service_tier"}  # bookkeeping fields without effect on the answer
KNOWN = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
}


class APIError(Exception):
    """An error answered in OpenAI's format ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: HTTP status code.
        message: what is wrong, for the client.
        type: OpenAI error type (``invalid_request_error``, ``authentication_error``, ``not_found_error``,
            ``server_error``, ``service_unavailable_error``).
        param: the request parameter at fault, e.g. ``messages[0].content[1].image_url.url``.
        code: a short machine-readable code (``invalid_image``, ``context_length_exceeded``, ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> APIError:
    """A 400 ``invalid_request_error``.

    Args:
        message: what is wrong.
        param: the parameter at fault.
        code: machine-readable code.
    """
    return APIError(400, message, param=param, code=code)


@dataclass
class MediaRef:
    """One media content part: which kind, its URL, options and where it sits in the request.

    Args:
        kind: ``"image"`` or ``"volume"``.
        url: a ``data:`` or ``file://`` URL (anything else is refused when decoding).
        param: the request path of the URL, for error messages.
        window: an optional display window for 2D images (DICOM, 16-bit): preset name, ``"custom:C,W"``
            or ``[center, width]``.
    """

    kind: str
    url: str
    param: str
    window: Any = None


@dataclass
class ChatRequest:
    """A validated chat-completion request.

    Args:
        messages: ``[{"role", "content"}]`` with string content holding ``<image>`` / ``<volume>`` markers.
        media: the media parts in marker order over the whole conversation.
        max_tokens: requested completion limit (None: the server's default).
        temperature / top_p / seed: sampling settings (temperature 0 or None and no top_p: greedy).
        stop: strings that end the answer (not included in it).
        stream: answer as Server-Sent Events.
        include_usage: with ``stream``, send a final chunk with ``usage``.
        model: the requested model name (None: the served one).
        max_tokens_param: which of ``max_tokens`` / ``max_completion_tokens`` set the limit (for errors).
    """

    messages: list[dict[str, str]]
    media: list[MediaRef] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    max_tokens_param: str = "max_tokens"

    @property
    def do_sample(self) -> bool:
        """Sampling unless temperature is 0 (OpenAI's way of asking for greedy) or unset."""
        return self.temperature is not None and self.temperature > 0


def _number(body: dict[str, Any], name: str, low: float, high: float, integer: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise bad_request(f"'{name}' must be {kind}, got {type(value).__name__}", name, "invalid_type")
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low:g} and {high:g}, got {value}", name, "invalid_value")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = _number(body, name, low, high, integer=True)
    return None if value is None else int(value)  # _number checked it is an int


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body into a :class:`ChatRequest`.

    Args:
        body: the JSON value of the request.

    Raises:
        APIError: 400 naming the parameter and what is wrong.
    """
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
    for name in body:
        if name in UNSUPPORTED and body[name] not in (None, False, 0, [], {}):
            if name == "response_format" and isinstance(body[name], dict) and body[name].get("type") == "text":
                continue
            raise bad_request(
                f"'{name}' is not supported by medvl serve ({UNSUPPORTED[name]})", name, "unsupported_parameter"
            )
        if name not in KNOWN and name not in IGNORED and name not in UNSUPPORTED:
            raise bad_request(f"unknown parameter '{name}'", name, "unknown_parameter")
    n = _integer(body, "n", 1, 1_000_000)
    if n is not None and n != 1:
        raise bad_request(
            f"'n' = {n} is not supported: medvl serve returns one choice per request", "n", "unsupported_parameter"
        )
    max_tokens = _integer(body, "max_completion_tokens", 1, 10**9)
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 10**9)
        param = "max_tokens"
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0:
        raise bad_request("'top_p' must be > 0", "top_p", "invalid_value")
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > 4 or any(not s for s in stops):
        raise bad_request("'stop' takes up to 4 non-empty strings", "stop", "invalid_value")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_request(
            "'stream_options' supports only {\"include_usage\": bool}", "stream_options", "unsupported_parameter"
        )
    if options and not stream:
        raise bad_request("'stream_options' needs 'stream': true", "stream_options", "invalid_value")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model", "invalid_type")
    messages, media = _parse_messages(body.get("messages"))
    return ChatRequest(
        messages=messages,
        media=media,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=stops,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        model=model,
        max_tokens_param=param,
    )


def _parse_messages(raw: Any) -> tuple[list[dict[str, str]], list[MediaRef]]:
    if raw is None:
        raise bad_request("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list", "messages", "invalid_type")
    messages: list[dict[str, str]] = []
    media: list[MediaRef] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", where, "invalid_type")
        role = msg.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad_request(
                f"{where}.role {role!r} is not supported; valid: system, developer, user, assistant",
                f"{where}.role",
                "invalid_value",
            )
        extra = set(msg) - {"role", "content", "name"}
        if extra:
            raise bad_request(
                f"{where} has unsupported field(s) {sorted(extra)} (tool calls are not supported)",
                f"{where}.{sorted(extra)[0]}",
                "unsupported_parameter",
            )
        content = msg.get("content")
        if isinstance(content, str):
            text = _check_text(content, f"{where}.content")
        elif isinstance(content, list):
            text = _parse_parts(content, where, role, media)
        else:
            raise bad_request(
                f"{where}.content must be a string or a list of content parts", f"{where}.content", "invalid_type"
            )
        messages.append({"role": role, "content": text})
    if messages[-1]["role"] != "user":
        raise bad_request(
            "the last message must be a user turn (it is the one answered)",
            f"messages[{len(messages) - 1}].role",
            "invalid_value",
        )
    return messages, media


def _check_text(text: str, param: str) -> str:
    for marker, part in ((IMAGE_MARKER, "image_url"), (VOLUME_MARKER, "volume_url")):
        if marker in text:
            raise bad_request(
                f"{param} contains the literal marker {marker}; send media as '{part}' content parts (the server "
                "places the markers), so that every marker has its media",
                param,
                "marker_media_mismatch",
            )
    return text


def _parse_parts(parts: list, where: str, role: str, media: list[MediaRef]) -> str:
    pieces: list[str] = []
    for j, part in enumerate(parts):
        param = f"{where}.content[{j}]"
        if not isinstance(part, dict) or "type" not in part:
            raise bad_request(f"{param} must be an object with a 'type'", param, "invalid_type")
        kind = part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{param}.text must be a string", f"{param}.text", "invalid_type")
            pieces.append(_check_text(text, f"{param}.text"))
        elif kind in ("image_url", "volume_url"):
            if role != "user":
                raise bad_request(f"{param}: media parts are only accepted in user messages", param, "invalid_value")
            spec = part.get(kind)
            if isinstance(spec, str):  # a bare URL string, as some clients send
                spec = {"url": spec}
            if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
                raise bad_request(f"{param}.{kind}.url must be a string URL", f"{param}.{kind}.url", "invalid_type")
            allowed = {"url", "detail", "window"} if kind == "image_url" else {"url", "window"}
            unknown = set(spec) - allowed
            if unknown:
                raise bad_request(
                    f"{param}.{kind} has unsupported field(s) {sorted(unknown)}; valid: {sorted(allowed)}",
                    f"{param}.{kind}",
                    "unsupported_parameter",
                )
            media_kind = "image" if kind == "image_url" else "volume"
            media.append(
                MediaRef(kind=media_kind, url=spec["url"], param=f"{param}.{kind}.url", window=spec.get("window"))
            )
            # The chat template renders a media content part as its marker and a newline.
            pieces.append((IMAGE_MARKER if media_kind == "image" else VOLUME_MARKER) + "\n")
        else:
            raise bad_request(
                f"{param}.type {kind!r} is not supported; valid: text, image_url, volume_url",
                f"{param}.type",
                "unsupported_content_type",
            )
    return "".join(pieces)


__all__ = ["APIError", "ChatRequest", "MediaRef", "bad_request", "parse_chat_request"]
