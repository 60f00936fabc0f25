"""medvl.serve.scheduler: grouping, per-request limits and stop strings over generate_detailed (tiny model)."""

from __future__ import annotations

import threading
import time

import numpy as np
from PIL import Image

from medvl.data.records import Record
from medvl.inference import Generation, generate
from medvl.serve.scheduler import Job, SamplingSettings, Scheduler


def job(record: Record, max_tokens: int = 5, settings: SamplingSettings | None = None, stop=(), sink=None):
    sink = sink if sink is not None else {}
    done = threading.Event()

    def on_done(text: str, gen: Generation) -> None:
        sink["text"], sink["gen"] = text, gen
        done.set()

    def on_error(err: BaseException) -> None:
        sink["error"] = err
        done.set()

    sink.setdefault("deltas", [])
    j = Job(
        record=record,
        max_tokens=max_tokens,
        settings=settings if settings is not None else SamplingSettings(),
        stop=list(stop),
        on_delta=sink["deltas"].append,
        on_done=on_done,
        on_error=on_error,
    )
    return j, sink, done


def test_stop_strings_hold_back_prefixes_and_cut() -> None:
    j, sink, _ = job(Record(id="x", messages=[]), stop=["END", "##"])
    for piece in ["The ", "lesion E", "N", "D of", " more"]:
        j.feed(piece)
    assert "".join(sink["deltas"]) == "The lesion " and j.should_stop()
    j.finish(Generation("The lesion END of more", 3, 5, "length"))
    assert sink["text"] == "The lesion " and sink["gen"].finish_reason == "stop"
    # a held-back prefix that does not complete a stop string is released
    j2, sink2, _ = job(Record(id="y", messages=[]), stop=["##"])
    for piece in ["a#", "b"]:
        j2.feed(piece)
    assert "".join(sink2["deltas"]) == "a#b"
    j2.finish(Generation("a#b", 1, 2, "length"))
    assert sink2["text"] == "a#b" and sink2["gen"].finish_reason == "length"


def test_batches_group_compatible_requests_and_match_generate(tiny_model, tiny_processor) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)) for _ in range(4)]
    records = [
        Record(id=str(k), messages=[{"role": "user", "content": f"<image>\nquestion {k}?"}], images=[images[k]])
        for k in range(4)
    ]
    limits = [3, 6, 4, 5]
    expected = [
        generate(tiny_model, tiny_processor, [r], batch_size=1, max_new_tokens=n, progress=False)[0]
        for r, n in zip(records, limits)
    ]
    sizes: list[int] = []
    sched = Scheduler(tiny_model, tiny_processor, max_batch_size=8, batch_wait_s=0.0, on_batch=sizes.append)
    try:
        # hold the worker with a first job so that the next ones queue up together
        gate = threading.Event()
        blocker, _, blocker_done = job(records[0], max_tokens=2)
        original = blocker.feed
        blocker.feed = lambda d: (gate.wait(), original(d))  # type: ignore[method-assign]
        sched.submit(blocker)
        while sched.running == 0 and not blocker_done.is_set():  # the worker has taken it
            time.sleep(0.01)
        jobs = [job(r, n) for r, n in zip(records, limits)]
        seeded = job(records[1], 4, SamplingSettings(do_sample=True, temperature=0.9, seed=7))
        for j, _, _ in jobs[:2]:
            sched.submit(j)
        sched.submit(seeded[0])
        for j, _, _ in jobs[2:]:
            sched.submit(j)
        assert sched.queue_length == 5
        gate.set()
        for _, _, done in [*jobs, seeded, (None, None, blocker_done)]:
            assert done.wait(120)
    finally:
        sched.close()
    assert [s["text"] for _, s, _ in jobs] == expected
    # a row that ran to its limit generated exactly that many tokens; one that stopped earlier, fewer
    assert all(
        s["gen"].completion_tokens == n if s["gen"].finish_reason == "length" else s["gen"].completion_tokens < n
        for (_, s, _), n in zip(jobs, limits)
    )
    assert ["".join(s["deltas"]) for _, s, _ in jobs] == expected
    # the blocker alone, then the four greedy requests in one batch, the seeded one alone
    assert sizes == [1, 4, 1]
    assert "text" in seeded[1]
