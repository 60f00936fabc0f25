"""Peak resident memory of a call (``medvl.tools.bench.timing``) sees a tensor of known size."""

from __future__ import annotations

import pytest
import torch

from medvl.tools.bench.timing import peak_rss_delta_mib


def test_peak_rss_delta_sees_a_64_mib_tensor():
    def allocate():
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        return float(x[-1])

    delta = peak_rss_delta_mib(allocate)
    if delta is None:
        pytest.skip("this kernel does not expose /proc/self/clear_refs")
    assert 60 <= delta < 200
