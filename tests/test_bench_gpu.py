"""Smoke check of ``bench/gpu.py`` on the tiny configs (CPU): it runs every family and reports sane numbers;
and ``scripts/gpu-check`` refuses plainly where there is no GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_the_tiny_configs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    assert bench.main(["--sizes", "tiny", "--contexts", "64", "--frames", "4", "--decode", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert out[0].startswith("| model | device |")
    rows = report["results"]
    families = [r["family"] for r in rows]
    assert families[0] == "smolvlm"  # the baseline of the ratios comes first
    assert sorted(families) == ["llava_next_video", "llava_onevision", "qwen2_5_vl", "qwen3_vl", "smolvlm"]
    for row in rows:
        assert row["size"] == "tiny"
        assert row["device"].startswith("cpu")
        assert row["tokens_per_frame"] == 16
        for key in ("encode_fps", "prefill_ms@64", "ttft_ms@64", "decode_tok_s", "decode_tok_s@batch4", "peak_mb"):
            assert row[key] > 0, key
        if importlib.util.find_spec("memory.merge") is not None:
            assert row["merge_fps"] > 0
        else:
            assert row["merge_fps"] is None


def test_bench_refuses_real_size_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        _load().main(["--sizes", "real"])
    assert info.value.code == 2


def test_gpu_check_says_plainly_when_there_is_no_gpu(tmp_path: Path) -> None:
    """scripts/gpu-check on a machine without CUDA fails at once, saying why, with the machine described."""
    script = BENCH.parents[1] / "scripts" / "gpu-check"
    hidden = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, also on a machine that has one
    run = subprocess.run([str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=hidden)
    assert run.returncode == 1
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "FAIL: torch sees no CUDA device" in summary
    assert "available False" in (tmp_path / "out" / "machine.txt").read_text()
