"""The web demo page (``medvl.tools.demo.app``): the whole page in a real headless Chromium against a real
server, and ``mount_demo`` on a FastAPI app served by uvicorn.

The browser test starts ``python -m medvl demo`` as a subprocess on a free 127.0.0.1 port and drives
Debian's chromium (``/usr/bin/chromium``, from ``scripts/system-deps.sh``) through playwright; no
browser is downloaded. It uploads a synthetic radiograph (16-bit PNG) and a synthetic chest CT
(NIfTI), moves a slice slider, changes the window, asks a question and waits for the streamed
answer, which must equal ``medvl.inference.chat``'s greedy answer for the same input. Screenshots go
to the test's tmp folder.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, TINY_YAML

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MAX_NEW_TOKENS = 24


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory) -> Path:
    """The tiny model with an untied LM head.

    With tied input/output embeddings a random tiny LM predicts the last prompt token again, which
    after the chat template's "assistant\\n" is newline after newline: an answer the page shows as
    nothing. The untied head gives visible (random) text, so the page's answer can be compared.
    """
    from medvl.build import build_model, load_model_spec, save_checkpoint

    model, processor = build_model(load_model_spec(TINY_YAML, ["llm.config.tie_word_embeddings=false"]))
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("demo_model") / "checkpoint")


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic chest radiograph (16-bit PNG) and chest CT (NIfTI) from medvl.tools.synth."""
    from medvl.tools.synth.dataset import synthesize

    root = tmp_path_factory.mktemp("phantoms")
    # n = 3, seed 0: synthesize fails when a question type gets no answer at all (e.g. n = 1)
    synthesize("2d", 3, 0, root / "2d")
    synthesize("3d", 3, 0, root / "3d")
    return root / "2d" / "images" / "case00000.png", root / "3d" / "volumes" / "case00000.nii.gz"


def test_page_callbacks_stream_chat_answers_without_re_encoding(demo_model_dir: Path, phantom_files) -> None:
    """The page's own callbacks (no browser): uploads are encoded once, at upload; the answer arrives
    in several growing pieces and ends as ``chat``'s greedy answer; the second turn reuses the media."""
    from medvl.inference import chat, load_model
    from medvl.tools.demo.app import build_demo

    png, nii = phantom_files
    model, processor = load_model(demo_model_dir, device="cpu")
    callbacks = {getattr(f.fn, "__name__", None): f.fn for f in build_demo(model, processor).fns.values()}
    calls = {"image": 0, "volume": 0}
    hooks = [
        model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__("image", calls["image"] + 1)),
        model.volume_encoder.register_forward_hook(lambda *_: calls.__setitem__("volume", calls["volume"] + 1)),
    ]
    try:
        conv = callbacks["on_upload"](None, str(png), "lung", -600.0, 1500.0)[0]
        conv = callbacks["on_upload"](conv, str(nii), "lung", -600.0, 1500.0)[0]
        assert calls == {"image": 1, "volume": 1}
        history: list = []
        answers = []
        for question in ("Is there a nodule?", "Which lobe?"):
            conv, box, history, _ = callbacks["add_turn"](conv, question, history)
            assert box == ""
            updates = [h[-1]["content"] for h, _ in callbacks["respond"](conv, history, MAX_NEW_TOKENS, 0.0, 1.0)]
            assert len(set(updates)) > 2  # streamed: several distinct, growing states
            assert all(updates[-1].startswith(u) for u in updates)
            history = [*history, {"role": "assistant", "content": updates[-1]}]
            answers.append(updates[-1])
        assert calls == {"image": 1, "volume": 1}  # both turns reused the upload-time encoding
    finally:
        for h in hooks:
            h.remove()
    messages = [{"role": "user", "content": "<image>\n<volume>\nIs there a nodule?"}]
    first = chat(model, processor, messages, images=[str(png)], volumes=[str(nii)], max_new_tokens=MAX_NEW_TOKENS)
    messages += [{"role": "assistant", "content": first.strip()}, {"role": "user", "content": "Which lobe?"}]
    second = chat(model, processor, messages, images=[str(png)], volumes=[str(nii)], max_new_tokens=MAX_NEW_TOKENS)
    assert answers == [first.strip(), second.strip()]
    assert conv.messages[-1] == {"role": "assistant", "content": second.strip()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def demo_server(demo_model_dir: Path, tmp_path: Path):
    """``python -m medvl demo`` in its own process group; yields its URL; the whole group is killed after."""
    import httpx

    port = _free_port()
    log = open(tmp_path / "demo-server.log", "w")
    server_tmp = tmp_path / "server-tmp"  # the server's TMPDIR: the example phantoms are rendered there
    server_tmp.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "TMPDIR": str(server_tmp),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medvl",
            "demo",
            str(demo_model_dir),
            "--port",
            str(port),
            "--max-new-tokens",
            str(MAX_NEW_TOKENS),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300  # model load + gradio import on a busy 2-core machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"medvl demo exited with {proc.returncode}:\n{(tmp_path / 'demo-server.log').read_text()}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"medvl demo did not answer on {url}:\n{(tmp_path / 'demo-server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for _ in range(50):  # children (if any) leave the group shortly after the leader
            if not _group_alive(proc.pid):
                break
            time.sleep(0.1)
        log.close()
        assert not _group_alive(proc.pid), "processes of the demo server are still running"
        # SIGTERM closed the server properly: no rendered example phantoms, no copies of the uploads left
        assert not list(server_tmp.glob("medvl-demo-examples-*")), "the example phantoms were not removed"
        left = [f.name for f in (tmp_path / "gradio").rglob("*") if f.is_file()]
        assert not [n for n in left if n.endswith((".nii.gz", ".png")) and n != "image.png"], left


def _served_image(page, selector: str) -> Image.Image:
    """The image an <img> shows, fetched from the server (the viewer sends lossless PNG)."""
    import httpx

    src = page.locator(f"{selector} img").get_attribute("src")
    return Image.open(io.BytesIO(httpx.get(src, timeout=30).content)).convert("RGB")


def test_demo_page_in_headless_chromium(demo_server: str, demo_model_dir: Path, phantom_files, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); scripts/system-deps.sh installs it")
    from playwright.sync_api import sync_playwright

    from medvl.imaging.volume3d import load_volume
    from medvl.inference import chat, load_model
    from medvl.tools.demo.viewer import orient_for_view, render_plane

    png, nii = phantom_files
    question = "Is there a nodule in the left lung?"
    model, processor = load_model(demo_model_dir, device="cpu")
    expected = chat(
        model,
        processor,
        [{"role": "user", "content": f"<image>\n<volume>\n{question}"}],
        images=[str(png)],
        volumes=[str(nii)],
        max_new_tokens=MAX_NEW_TOKENS,
    ).strip()
    assert expected, "the reference answer is empty: the comparison would prove nothing"
    follow_up = "Which lobe?"
    second_turn = [
        {"role": "user", "content": f"<image>\n<volume>\n{question}"},
        {"role": "assistant", "content": expected},
        {"role": "user", "content": follow_up},
    ]
    expected_second = chat(
        model, processor, second_turn, images=[str(png)], volumes=[str(nii)], max_new_tokens=MAX_NEW_TOKENS
    ).strip()
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1200})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo_server.rstrip("/"))
            page = context.new_page()
            page.goto(demo_server, wait_until="domcontentloaded")
            notice = page.locator("#medvl-notice")
            notice.wait_for(timeout=120_000)
            assert "research use only" in notice.inner_text().lower()
            assert "not for clinical decisions" in notice.inner_text().lower()
            page.screenshot(path=str(shots / "01-empty.png"), full_page=True)

            # ---- upload a 2D image, then a CT
            upload = page.locator("#medvl-upload input[type=file]")
            upload.set_input_files(str(png))
            page.wait_for_function(
                f"document.querySelector('#medvl-attached').innerText.includes('{png.name}')", timeout=120_000
            )
            assert "pixel_values (3, 64, 64)" in page.locator("#medvl-model-input-info").inner_text()
            upload.set_input_files(str(nii))
            page.wait_for_function(
                f"document.querySelector('#medvl-attached').innerText.includes('{nii.name}')", timeout=120_000
            )
            page.locator("#medvl-axial img").wait_for(timeout=60_000)
            assert "volume_values (1, 16, 64, 64)" in page.locator("#medvl-model-input-info").inner_text()
            page.screenshot(path=str(shots / "02-uploaded.png"), full_page=True)

            # ---- the viewer: the slider and the window change the served image to what the renderer makes
            view = orient_for_view(load_volume(nii))
            n_axial = view.num_slices("axial")
            assert page.locator("#medvl-axial-slice input[type=range]").get_attribute("max") == str(n_axial - 1)
            before = page.locator("#medvl-axial img").get_attribute("src")
            index = n_axial // 2 + 7
            page.locator("#medvl-axial-slice input[type=range]").fill(str(index))
            page.wait_for_function(
                "(before) => document.querySelector('#medvl-axial img').getAttribute('src') !== before",
                arg=before,
                timeout=60_000,
            )
            moved = page.locator("#medvl-axial img").get_attribute("src")
            page.get_by_label("bone").check()
            page.wait_for_function(
                "(before) => document.querySelector('#medvl-axial img').getAttribute('src') !== before",
                arg=moved,
                timeout=60_000,
            )
            assert page.locator("#medvl-level input").input_value() == "400"
            assert page.locator("#medvl-width input").input_value() == "1800"
            served = np.asarray(_served_image(page, "#medvl-axial"))
            assert np.array_equal(served, np.asarray(render_plane(view, "axial", index, "bone").image))
            # a custom level/width, typed: "custom" gets selected and the planes show that window
            page.locator("#medvl-level input").fill("-500")
            page.locator("#medvl-width input").fill("1000")
            custom = np.asarray(render_plane(view, "axial", index, (-500.0, 1000.0)).image)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # renders arrive as the server answers each keystroke
                served = np.asarray(_served_image(page, "#medvl-axial"))
                if np.array_equal(served, custom):
                    break
                time.sleep(0.3)
            assert np.array_equal(served, custom)
            assert page.get_by_label("custom").is_checked()
            page.get_by_label("bone").check()  # back to a preset, with the fields still focused
            page.wait_for_function("document.querySelector('#medvl-level input').value === '400'", timeout=60_000)

            # ---- ask; the streamed answer equals chat()'s greedy answer
            page.locator("#medvl-question textarea").fill(question)
            page.locator("#medvl-send").click()
            bot = page.locator("#medvl-chat [data-testid=bot]").last
            bot.wait_for(timeout=120_000)
            copy = page.locator("#medvl-chat .message-buttons-left button[aria-label='Copy message']").last
            deadline, shown = time.monotonic() + 120, None
            while time.monotonic() < deadline:  # the answer streams in; the copy button gives its raw text
                copy.click()
                shown = page.evaluate("navigator.clipboard.readText()")
                if shown == expected:
                    break
                time.sleep(0.5)
            assert shown == expected
            assert question in page.locator("#medvl-chat [data-testid=user]").last.inner_text()
            page.screenshot(path=str(shots / "03-answered.png"), full_page=True)

            # ---- a second turn about the same media (encoded once, at upload) answers like chat() too
            page.locator("#medvl-question textarea").fill(follow_up)
            page.locator("#medvl-send").click()
            page.locator("#medvl-chat [data-testid=bot]").nth(1).wait_for(timeout=120_000)
            copy = page.locator("#medvl-chat .message-buttons-left button[aria-label='Copy message']").nth(1)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                copy.click()
                shown = page.evaluate("navigator.clipboard.readText()")
                if shown == expected_second:
                    break
                time.sleep(0.5)
            assert shown == expected_second

            # ---- an example case: a synthetic CT phantom rendered on first use, with its question
            page.locator("#medvl-new").click()
            page.locator("#medvl-example input").click()
            page.get_by_role("option", name="Chest CT phantom 1").click()
            page.locator("#medvl-load-example").click()
            page.wait_for_function(
                "document.querySelector('#medvl-attached').innerText.includes('case00000.nii.gz')", timeout=120_000
            )
            assert page.locator("#medvl-question textarea").input_value().endswith("?")
            assert list((tmp_path / "server-tmp").glob("medvl-demo-examples-*/3d/volumes/case00000.nii.gz"))
            page.screenshot(path=str(shots / "04-example.png"), full_page=True)

            # ---- a corrupt upload: an error on the page naming the file, the attached case is kept
            broken = tmp_path / "broken.nii.gz"
            broken.write_bytes(b"not a NIfTI file")
            upload.set_input_files(str(broken))
            page.get_by_text("file 'broken.nii.gz': unreadable NIfTI file").first.wait_for(timeout=60_000)
            assert "case00000.nii.gz" in page.locator("#medvl-attached").inner_text()
        finally:
            browser.close()
    assert len(list(shots.glob("*.png"))) == 4


def test_demo_mounts_on_a_fastapi_app(tiny_model, tiny_processor) -> None:
    """``mount_demo`` (``medvl serve --ui``) puts the page on a FastAPI app: a real uvicorn server serves it."""
    import threading

    import httpx
    import uvicorn
    from fastapi import FastAPI

    from medvl.tools.demo.app import mount_demo

    app = FastAPI()
    mount_demo(app, tiny_model, tiny_processor, "/ui")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.started
        page = httpx.get(f"http://127.0.0.1:{port}/ui/", timeout=30, follow_redirects=True)
        assert page.status_code == 200
        config = httpx.get(f"http://127.0.0.1:{port}/ui/config", timeout=30).json()
        texts = [c.get("props", {}).get("value") for c in config["components"]]
        assert any(isinstance(t, str) and "Research use only" in t for t in texts)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
