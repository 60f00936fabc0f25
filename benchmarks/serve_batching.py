"""What batching buys ``medvl serve``: requests/s and generated tokens/s at 1, 8 and 32 concurrent clients.

Two real servers (``python -m medvl serve`` subprocesses) on the same model: one-at-a-time
(``--max-batch-size 1``) and batched (``--max-batch-size 32``). For each concurrency C, C client
threads (the ``openai`` client) each send ``--rounds`` chat requests back to back (the two servers
take turns, ``--repeats`` times; the best repeat counts, as on a shared machine other processes only
ever add time): a mix of 2D
(PNG ``data:`` URL) and CT (NIfTI ``data:`` URL) questions, greedy, ``--max-tokens`` each. Reported:
requests/s and completion tokens/s per server and their ratio batched / one-at-a-time (the same
work both ways, so the ratio is what batching buys on this machine).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/serve_batching.py --size quickstart --out serve_batching.json
    python benchmarks/serve_batching.py --model runs/my-model --clients 1,8,32

Without ``--model`` a random-weight model is built from ``configs/tiny.yaml`` (``--size tiny``) or
with the quickstart's LLM width (``--size quickstart``: hidden 128, MLP 512, 2 layers).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": [],
    "quickstart": ["llm.config.hidden_size=128", "llm.config.intermediate_size=512", "llm.config.num_hidden_layers=2"],
}
QUESTIONS = ["Is there a nodule?", "Describe the findings.", "Any pleural effusion?", "Where is the lesion?"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(size: str, out: Path) -> Path:
    from medvl.build import build_model, load_model_spec, save_checkpoint

    model, processor = build_model(load_model_spec(REPO / "configs" / "tiny.yaml", SIZES[size]))
    return save_checkpoint(model, processor, out)


def media_urls(workdir: Path) -> tuple[list[str], list[str]]:
    import nibabel as nib
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images, volumes = [], []
    for k in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256)).astype(np.uint8)).save(buf, format="PNG")
        images.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
        path = workdir / f"ct{k}.nii.gz"
        nib.save(
            nib.Nifti1Image(rng.integers(-1000, 1000, (64, 64, 32)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1.0])),
            str(path),
        )
        volumes.append("data:application/gzip;base64," + base64.b64encode(path.read_bytes()).decode())
    return images, volumes


def start_server(model: Path, max_batch_size: int, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        MEDVL_LOG_LEVEL="WARNING",
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medvl",
            "serve",
            str(model),
            "--port",
            str(port),
            "--max-batch-size",
            str(max_batch_size),
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(900):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def run_level(
    url: str, model_name: str, clients: int, rounds: int, max_tokens: int, images: list[str], volumes: list[str]
) -> dict:
    import openai

    tokens = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        api = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
        barrier.wait()
        for r in range(rounds):
            n = k * rounds + r
            part = (
                {"type": "image_url", "image_url": {"url": images[n % len(images)]}}
                if n % 2 == 0
                else {"type": "volume_url", "volume_url": {"url": volumes[n % len(volumes)]}}
            )
            try:
                resp = api.chat.completions.create(
                    model=model_name,
                    max_tokens=max_tokens,
                    messages=[
                        {"role": "user", "content": [part, {"type": "text", "text": QUESTIONS[n % len(QUESTIONS)]}]}
                    ],
                )
                tokens[k] += resp.usage.completion_tokens
            except Exception as err:  # reported in the results
                errors.append(repr(err))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    n = clients * rounds
    return {
        "clients": clients,
        "requests": n,
        "wall_s": wall,
        "requests_per_s": n / wall,
        "tokens_per_s": sum(tokens) / wall,
        "completion_tokens": sum(tokens),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: build one, see --size)")
    parser.add_argument("--size", choices=sorted(SIZES), default="quickstart")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32, help="of the batched server")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per level and server (best reported)")
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="medvl-serve-bench-") as tmp:
        work = Path(tmp)
        model = Path(args.model) if args.model else build(args.size, work / "model")
        images, volumes = media_urls(work)
        results: dict = {
            "model": str(args.model or f"random {args.size}"),
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_before": os.getloadavg(),
            "servers": {},
        }
        servers = {}
        try:
            for label, size in (("one_at_a_time", 1), ("batched", args.max_batch_size)):
                servers[label] = (size, *start_server(model, size, work / f"{label}.log"))
            name = model.resolve().name
            for _label, (_, _, url) in servers.items():
                # warm-up: one client, then concurrent ones (first calls of every kernel shape, allocator)
                run_level(url, name, 1, 4, args.max_tokens, images, volumes)
                run_level(url, name, 8, 1, args.max_tokens, images, volumes)
            levels_out: dict[str, list] = {label: [] for label in servers}
            for c in levels:
                # The two servers take turns, repeat after repeat, so that load from other processes on a
                # shared machine hits both alike; the best repeat of each is reported.
                runs: dict[str, list] = {label: [] for label in servers}
                for _ in range(args.repeats):
                    for label, (_, _, url) in servers.items():
                        runs[label].append(run_level(url, name, c, args.rounds, args.max_tokens, images, volumes))
                for label in servers:
                    best = max(runs[label], key=lambda r: r["requests_per_s"])
                    best["repeats_requests_per_s"] = [r["requests_per_s"] for r in runs[label]]
                    best["errors"] = [e for r in runs[label] for e in r["errors"]]
                    levels_out[label].append(best)
            for label, (size, _, _) in servers.items():
                results["servers"][label] = {"max_batch_size": size, "levels": levels_out[label]}
        finally:
            for _, proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)
        results["load_after"] = os.getloadavg()
    one, bat = results["servers"]["one_at_a_time"]["levels"], results["servers"]["batched"]["levels"]
    results["ratios"] = [
        {
            "clients": a["clients"],
            "requests_per_s": b["requests_per_s"] / a["requests_per_s"],
            "tokens_per_s": b["tokens_per_s"] / a["tokens_per_s"],
        }
        for a, b in zip(one, bat)
    ]
    print(
        f"{'clients':>7} | {'req/s 1-at-a-time':>17} {'req/s batched':>13} {'ratio':>6} | "
        f"{'tok/s 1-at-a-time':>17} {'tok/s batched':>13} {'ratio':>6} | errors"
    )
    for a, b, r in zip(one, bat, results["ratios"]):
        print(
            f"{a['clients']:>7} | {a['requests_per_s']:>17.2f} {b['requests_per_s']:>13.2f} "
            f"{r['requests_per_s']:>6.2f} | {a['tokens_per_s']:>17.1f} {b['tokens_per_s']:>13.1f} "
            f"{r['tokens_per_s']:>6.2f} | {len(a['errors']) + len(b['errors'])}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
