"""``medvl serve`` end to end: a real uvicorn server in a subprocess, driven by the real ``openai`` client.

One server per module (the tiny model: a 2D tower and a 3D encoder); answers are checked against
``medvl.inference.generate`` run here on the same inputs (files on disk, one at a time), so the
server's preprocessing, batching and streaming must reproduce ``medvl infer`` exactly.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import openai
import pydicom
import pydicom.data
import pytest
from PIL import Image

from medvl.data.records import Record

API_KEY = "test-key-7c1d"
CT_SERIES = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
PLANTED_NAME = "Canaryplanted^Zyxwv"
PLANTED_ID = "PID-CANARY-99417"
PROMPT_CANARY = "quokka-canary-question"
MAX_TOKENS = 6
MODEL = "checkpoint"  # the served name: the checkpoint folder's name


# ---------------------------------------------------------------------- media helpers


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def make_png(path: Path, seed: int, size: int = 48, bits: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    if bits == 16:
        Image.fromarray(rng.integers(0, 65535, (size, size)).astype(np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).save(path)
    return path


def make_nifti(path: Path, seed: int, shape=(20, 24, 12), dtype=np.int16) -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1000, shape).astype(dtype)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.2, 2.5, 1.0])), str(path))
    return path


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def volume_part(url: str) -> dict:
    return {"type": "volume_url", "volume_url": {"url": url}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


# ---------------------------------------------------------------------- server fixture


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m medvl serve`` subprocess with its log file."""

    def __init__(self, model_dir: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", MEDVL_LOG_LEVEL="INFO")
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.log_handle = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medvl", "serve", str(model_dir), "--port", str(self.port), *args],
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, deadline_s: float = 180.0) -> list[int]:
        """Poll /health until 200; returns the status codes seen (503 while loading)."""
        seen = []
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                code = httpx.get(self.url + "/health", timeout=2).status_code
                seen.append(code)
                if code == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_handle.close()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    for k in range(3):
        make_png(root / f"img{k}.png", seed=k)
        make_nifti(root / f"ct{k}.nii.gz", seed=10 + k)
    make_png(root / "img16.png", seed=5, bits=16)
    ds = pydicom.dcmread(CT_SMALL)
    ds.PatientName = PLANTED_NAME
    ds.PatientID = PLANTED_ID
    ds.save_as(root / "planted.dcm")
    with zipfile.ZipFile(root / "series.zip", "w") as z:
        for f in sorted(CT_SERIES.iterdir()):
            z.write(f, f"CT5N/{f.name}")
    outside = tmp_path_factory.mktemp("outside")
    make_png(outside / "secret.png", seed=99)
    (root / "link.png").symlink_to(outside / "secret.png")
    return root


@pytest.fixture(scope="module")
def server(tiny_model_dir, media_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_logs") / "server.log"
    srv = Server(
        tiny_model_dir,
        log,
        "--media-root",
        str(media_root),
        "--api-key",
        API_KEY,
        "--max-batch-size",
        "8",
        "--max-request-mb",
        "2",
        "--max-image-pixels",
        "250000",
        "--max-volume-voxels",
        "2000000",
        "--max-media",
        "3",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Greedy answers of ``medvl.inference.generate`` for records (one at a time, files from disk)."""
    from medvl.inference import generate, load_model

    model, processor = load_model(tiny_model_dir, device="cpu")
    cache: dict = {}

    def answer(content: str, images=(), volumes=(), max_tokens: int = MAX_TOKENS) -> str:
        key = (content, tuple(map(str, images)), tuple(map(str, volumes)), max_tokens)
        if key not in cache:
            rec = Record(
                id="ref",
                messages=[{"role": "user", "content": content}],
                images=[str(p) for p in images],
                volumes=[str(p) for p in volumes],
            )
            cache[key] = generate(model, processor, [rec], batch_size=1, max_new_tokens=max_tokens, progress=False)[0]
        return cache[key]

    answer.processor = processor
    return answer


def post(server, body, key: str | None = API_KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(
        server.url + "/v1/chat/completions",
        content=raw if raw is not None else json.dumps(body),
        headers=headers,
        timeout=300,
    )


# ---------------------------------------------------------------------- answers


def test_2d_data_url_equals_infer_and_usage(client, reference, media_root) -> None:
    png = media_root / "img0.png"
    resp = client.chat.completions.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        messages=user(image_part(data_url(png, "image/png")), text("Is there a nodule?")),
    )
    answer = resp.choices[0].message.content
    assert answer == reference("<image>\nIs there a nodule?", images=[png])
    # usage: the processor's own tokenisation of the rendered prompt, 16 placeholders for the image
    proc = reference.processor
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": "<image>\nIs there a nodule?"}], add_generation_prompt=True
    )
    n_prompt = proc(text=[prompt], images=[Image.open(png).convert("RGB")])["input_ids"].shape[1]
    assert resp.usage.prompt_tokens == n_prompt and n_prompt > 16
    if resp.choices[0].finish_reason == "length":
        assert resp.usage.completion_tokens == MAX_TOKENS
    else:
        assert resp.choices[0].finish_reason == "stop" and resp.usage.completion_tokens < MAX_TOKENS
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert client.models.list().data[0].id == MODEL


def test_ct_nifti_volume_url_equals_infer(client, reference, media_root) -> None:
    ct = media_root / "ct1.nii.gz"
    question = "Describe the lungs."
    expected = reference("<volume>\n" + question, volumes=[ct])
    by_data = client.chat.completions.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=user(volume_part(data_url(ct, "application/gzip")), text(question))
    )
    assert by_data.choices[0].message.content == expected
    by_path = client.chat.completions.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=user(volume_part("file://ct1.nii.gz"), text(question))
    )
    assert by_path.choices[0].message.content == expected
    assert by_data.usage.prompt_tokens == by_path.usage.prompt_tokens


def test_zipped_dicom_series_and_dicom_image(client, reference, media_root) -> None:
    series = media_root / "series.zip"
    got = client.chat.completions.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        messages=user(volume_part(data_url(series, "application/zip")), text("Findings?")),
    )
    assert got.choices[0].message.content == reference("<volume>\nFindings?", volumes=[CT_SERIES])
    png16 = media_root / "img16.png"
    got16 = client.chat.completions.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=user(image_part(data_url(png16, "image/png")), text("Findings?"))
    )
    assert got16.choices[0].message.content == reference("<image>\nFindings?", images=[png16])


def test_streamed_answer_concatenates_to_the_plain_one(client, media_root) -> None:
    messages = user(image_part(data_url(media_root / "img1.png", "image/png")), text("Where is the lesion?"))
    plain = client.chat.completions.create(model=MODEL, max_tokens=12, messages=messages)
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=12, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2  # really incremental
    assert "".join(pieces) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_stream_ends_with_done(server, media_root) -> None:
    body = {"messages": user(text("Hello")), "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_stop_string_cuts_the_answer(client, media_root) -> None:
    messages = user(image_part(data_url(media_root / "img2.png", "image/png")), text("Size?"))
    full = client.chat.completions.create(model=MODEL, max_tokens=12, messages=messages).choices[0].message.content
    if len(full) < 4:
        pytest.fail(f"the tiny model's answer {full!r} is too short to test stop strings")
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.index(stop)]
    cut = client.chat.completions.create(model=MODEL, max_tokens=12, messages=messages, stop=[stop])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=MODEL, max_tokens=12, messages=messages, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_seeded_sampling_is_reproducible(client, media_root) -> None:
    messages = user(image_part("file://img0.png"), text("Describe."))
    runs = [
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=1.5, seed=s)
        .choices[0]
        .message.content
        for s in (11, 11, 12)
    ]
    assert runs[0] == runs[1]  # a seeded request runs alone with its own seed
    greedy = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8).choices[0].message.content
    assert greedy not in runs or runs[0] != runs[2]  # temperature 1.5 on random weights: sampling, not greedy


# ---------------------------------------------------------------------- errors


def _error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code, err
    assert err["message"]
    return err


def test_bad_input_gives_4xx_in_openai_format(server, media_root, tmp_path) -> None:
    png_url = data_url(media_root / "img0.png", "image/png")
    q = text("q")
    cases = {
        "bad base64": (user(image_part("data:image/png;base64,@@not-base64@@"), q), 400, "invalid_base64"),
        "corrupt image": (
            user(
                image_part(
                    "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).decode()
                ),
                q,
            ),
            400,
            "invalid_image",
        ),
        "not an image": (
            user(image_part("data:image/png;base64," + base64.b64encode(b"hello" * 40).decode()), q),
            400,
            "invalid_image",
        ),
        "corrupt volume": (
            user(
                volume_part(
                    "data:application/gzip;base64,"
                    + base64.b64encode(gzip.compress(b"\x5c\x01\x00\x00" + b"x" * 100)[:60]).decode()
                ),
                q,
            ),
            400,
            "invalid_volume",
        ),
        "marker without media": (user(text("<image>\nWhat is this?")), 400, "marker_media_mismatch"),
        "volume marker in string": ([{"role": "user", "content": "<volume> here"}], 400, "marker_media_mismatch"),
        "unknown content type": (user({"type": "input_audio", "input_audio": {}}, q), 400, "unsupported_content_type"),
        "too many media": (user(*[image_part(png_url)] * 4, q), 400, "too_many_media"),
        "decompression bomb": (
            user(image_part("data:image/png;base64," + base64.b64encode(bomb_png(30000, 30000)).decode()), q),
            400,
            "image_too_large",
        ),
        "image over pixel limit": (
            user(image_part("data:image/png;base64," + base64.b64encode(bomb_png(600, 600)).decode()), q),
            400,
            "image_too_large",
        ),
        "remote url": (user(image_part("https://example.org/x.png"), q), 400, "remote_url_refused"),
        "n > 1": ({"messages": user(q), "n": 2}, 400, "unsupported_parameter"),
        "tools": (
            {"messages": user(q), "tools": [{"type": "function", "function": {"name": "f"}}]},
            400,
            "unsupported_parameter",
        ),
        "logprobs": ({"messages": user(q), "logprobs": True}, 400, "unsupported_parameter"),
        "max_tokens over the model": ({"messages": user(q), "max_tokens": 5000}, 400, "context_length_exceeded"),
        "prompt over the positions": (user(text("lung " * 2100)), 400, "context_length_exceeded"),
        "no messages": ({"max_tokens": 3}, 400, "missing_required_parameter"),
        "last turn not user": ([{"role": "assistant", "content": "hi"}], 400, "invalid_value"),
        "bad temperature": ({"messages": user(q), "temperature": 7}, 400, "invalid_value"),
        "volume window": (
            user({"type": "volume_url", "volume_url": {"url": "file://ct0.nii.gz", "window": "lung"}}, q),
            400,
            "unsupported_parameter",
        ),
        "unknown model": ({"messages": user(q), "model": "gpt-4o"}, 404, "model_not_found"),
    }
    big = np.zeros((200, 200, 200), dtype=np.uint8)  # 8 M voxels in a few kB of gzip
    make = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(big, np.eye(4)), str(make))
    cases["volume over voxel limit"] = (
        user(volume_part(data_url(make, "application/gzip")), q),
        400,
        "volume_too_large",
    )
    for name, (body, status, code) in cases.items():
        if isinstance(body, list):
            body = {"messages": body, "max_tokens": 3}
        err = _error(post(server, body), status, code)
        assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error"), name
    # transport-level problems
    _error(post(server, None, raw=b'{"messages": [}'), 400, "invalid_json")
    _error(post(server, None, raw=b"[" * 200_000 + b"]" * 200_000), 400, "invalid_json")  # nesting bomb
    _error(post(server, None, raw=b"\xff\xfe not utf-8"), 400, "invalid_json")
    _error(
        post(server, None, raw=json.dumps({"messages": user(text("x" * (3 * 1024 * 1024)))}).encode()),
        413,
        "request_too_large",
    )
    # the openai client surfaces them as its typed errors with the body intact
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=user(text("<image> no image")), max_tokens=3)
    assert info.value.body["code"] == "marker_media_mismatch"
    # and the server is still up and answering
    assert httpx.get(server.url + "/health").status_code == 200
    assert post(server, {"messages": user(q), "max_tokens": 2}).status_code == 200


def test_auth(server) -> None:
    body = {"messages": user(text("hi")), "max_tokens": 2}
    err = _error(post(server, body, key=None), 401, "invalid_api_key")
    assert err["type"] == "authentication_error"
    _error(post(server, body, key="wrong"), 401, "invalid_api_key")
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + path, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # health needs no key
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_file_urls_stay_inside_the_media_root(server, media_root) -> None:
    q = text("q")
    ok = post(server, {"messages": user(image_part("file://img0.png"), q), "max_tokens": 2})
    assert ok.status_code == 200
    assert (
        post(server, {"messages": user(image_part(f"file://{media_root}/img0.png"), q), "max_tokens": 2}).status_code
        == 200
    )
    for url in (
        "file://../outside/secret.png",
        f"file://{media_root}/../outside0/secret.png",
        "file:///etc/passwd",
        "file://link.png",
        "file:///%2e%2e/etc/passwd",
        "file://img0.png/../../../../etc/hostname",
    ):
        err = _error(post(server, {"messages": user(image_part(url), q), "max_tokens": 2}), 403, "media_path_forbidden")
        assert err["type"] == "permission_error"
    missing = post(server, {"messages": user(image_part("file://nope.png"), q), "max_tokens": 2})
    _error(missing, 400, "file_not_found")


def test_logs_hold_no_prompt_answer_or_dicom_header(server, client, media_root) -> None:
    dcm = media_root / "planted.dcm"
    assert PLANTED_NAME in str(pydicom.dcmread(dcm).PatientName)
    resp = client.chat.completions.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        messages=user(image_part(data_url(dcm, "application/dicom")), text(f"{PROMPT_CANARY}: any nodule?")),
    )
    answer = resp.choices[0].message.content
    by_path = client.chat.completions.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        messages=user(image_part("file://planted.dcm"), text(f"{PROMPT_CANARY} again")),
    )
    assert by_path.usage.prompt_tokens > 16  # the DICOM was read from the media root too
    log = server.log.read_text(errors="replace")
    assert resp.id in log  # the request was logged ...
    for secret in (PLANTED_NAME, "Canaryplanted", "Zyxwv", PLANTED_ID, PROMPT_CANARY):
        assert secret not in log  # ... without its content
    if len(answer.strip()) >= 6:
        assert answer.strip() not in log


# ---------------------------------------------------------------------- concurrency


def test_32_concurrent_mixed_clients_equal_sequential_greedy(server, reference, media_root) -> None:
    questions = ["Is there a nodule?", "Describe the image.", "Any effusion?", "Where is the lesion?"]
    jobs = []
    for k in range(32):
        q = questions[k % 4]
        if k % 2 == 0:
            path = media_root / f"img{k % 3}.png"
            parts, ref = [image_part(data_url(path, "image/png")), text(q)], ("<image>\n" + q, [path], [])
        else:
            path = media_root / f"ct{k % 3}.nii.gz"
            parts, ref = [volume_part(data_url(path, "application/gzip")), text(q)], ("<volume>\n" + q, [], [path])
        jobs.append((parts, ref, k % 3 == 0))
    expected = [reference(c, images=i, volumes=v) for _, (c, i, v), _ in jobs]

    def metric(name: str) -> float:
        text_ = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        return sum(float(line.split()[-1]) for line in text_.splitlines() if line.startswith(name + " "))

    batches_before = metric("medvl_batch_size_count")
    results: list = [None] * len(jobs)
    errors: list = []
    barrier = threading.Barrier(len(jobs))

    def run(k: int) -> None:
        parts, _, streamed = jobs[k]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=600)
        try:
            barrier.wait()
            if streamed:
                out = client.chat.completions.create(
                    model=MODEL, messages=user(*parts), max_tokens=MAX_TOKENS, stream=True
                )
                results[k] = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
            else:
                results[k] = (
                    client.chat.completions.create(model=MODEL, messages=user(*parts), max_tokens=MAX_TOKENS)
                    .choices[0]
                    .message.content
                )
        except Exception as err:  # collected and reported below
            errors.append((k, repr(err)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == expected
    # requests really shared batches: fewer generate calls than requests
    assert metric("medvl_batch_size_count") - batches_before < len(jobs)


def test_client_disconnect_frees_its_row(server, media_root) -> None:
    def metric(name: str) -> float:
        text_ = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        return sum(float(line.split()[-1]) for line in text_.splitlines() if line.startswith(name + " "))

    before = metric("medvl_cancelled_requests_total")
    body = {"messages": user(text("Tell me everything.")), "max_tokens": 1500, "stream": True}
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert all(g.startswith("data: ") or g == "" for g in got)
    end = time.monotonic() + 120
    while metric("medvl_cancelled_requests_total") == before and time.monotonic() < end:
        time.sleep(0.2)
    assert metric("medvl_cancelled_requests_total") == before + 1
    # the row stopped early: far fewer than the 1500 tokens it asked for were generated
    assert metric("medvl_cancelled_completion_tokens_total") < 1500
    assert metric("medvl_running_requests") == 0


def test_killing_the_server_mid_stream_leaves_no_process(tiny_model_dir, tmp_path) -> None:
    srv = Server(tiny_model_dir, tmp_path / "kill.log")
    try:
        seen = srv.wait_ready()
        body = {"messages": user(text("Tell me everything.")), "max_tokens": 1500, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=120) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(srv.proc.pid, signal.SIGTERM)  # the server goes down while the stream is open
            try:
                for _ in lines:
                    pass
            except httpx.HTTPError:
                pass  # cut off by the shutdown (or it ended within the graceful-shutdown window)
        srv.proc.wait(60)
    finally:
        srv.stop()
    # no process of the server's session survives it (no orphaned workers or helpers)
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == srv.proc.pid:  # session id == the server's pid (start_new_session)
            left.append(stat.parent.name)
    assert left == []
    assert seen[-1] == 200


def test_health_is_503_until_the_model_is_loaded(tiny_model, tiny_processor) -> None:
    """In process: a loader held back by an event; /health and chat answer 503 until it returns."""
    from starlette.testclient import TestClient

    from medvl.serve.app import ServeConfig, create_app

    release = threading.Event()

    def loader():
        release.wait(60)
        return tiny_model, tiny_processor

    app = create_app(ServeConfig(model_name="tiny"), loader=loader)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 503 and c.get("/health").json()["status"] == "loading"
        busy = c.post("/v1/chat/completions", json={"messages": user(text("q"))})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "model_loading"
        assert "medvl_model_ready 0.0" in c.get("/metrics").text
        release.set()
        state = app.state.medvl
        assert state.ready.wait(60)
        assert c.get("/health").status_code == 200
        ok = c.post("/v1/chat/completions", json={"messages": user(text("q")), "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
        assert "medvl_model_ready 1.0" in c.get("/metrics").text
        assert c.get("/nope").json()["error"]["type"] == "not_found_error"


def test_ui_page_skips_the_bearer_check_and_nothing_else(tiny_model, tiny_processor) -> None:
    """``create_app(ui=...)``: the mount callback gets the app and the path; the page's paths (and only
    those) are exempt from the API key, which a browser cannot send."""
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from medvl.serve.app import ServeConfig, create_app

    mounted: list[str] = []

    def mount(app: FastAPI, path: str) -> None:
        page = FastAPI()

        @page.get("/")
        def index() -> dict[str, str]:
            return {"page": "ok"}

        app.mount(path, page)
        mounted.append(path)

    config = ServeConfig(model_name="tiny", api_key=API_KEY)
    app = create_app(config, loaded=(tiny_model, tiny_processor), ui=mount, ui_path="/page")
    assert mounted == ["/page"]
    with TestClient(app) as c:
        assert c.get("/page/").json() == {"page": "ok"}
        assert c.get("/pages").status_code == 401  # a prefix of the name is not the page
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_ui_is_mounted_when_the_demo_exists(tiny_model, tiny_processor) -> None:
    """``--ui``: the Gradio page at /ui (behind a login with the API key); the API keeps its bearer check."""
    from starlette.testclient import TestClient

    from medvl.commands.serve import demo_ui
    from medvl.serve.app import ServeConfig, create_app

    config = ServeConfig(model_name="tiny", api_key=API_KEY)
    ui = demo_ui(tiny_model, tiny_processor, config)  # what `medvl serve --ui` passes
    app = create_app(config, loaded=(tiny_model, tiny_processor), ui=ui)
    with TestClient(app) as c:
        page = c.get("/ui/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert c.get("/ui/config").status_code in (401, 403)  # the page's API needs the login
        assert c.post("/ui/login/", data={"username": "x", "password": API_KEY}).status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
