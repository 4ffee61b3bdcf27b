"""The benchmark scripts run (tiny model, tiny sizes), so they do not rot between measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_model_bench_runs_and_reports_every_number() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "model.py"),
            "--json",
            "--context",
            "64",
            "--repeats",
            "1",
            "--new-tokens",
            "4",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    (row,) = report["results"]
    assert row["model"] == "tiny-random"
    for key in ("encode_ms_per_frame", "ttft_ms", "ttft_recompute_ms", "decode_tokens_per_s", "peak_rss_mb"):
        assert row[key] > 0, key
    assert row["context_frames"] == 4


def test_memory_layout_bench_runs_and_reports_span_and_cost() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "memory.py"),
            "--layout-only",
            "--budget",
            "1024",
            "--tokens-per-frame",
            "16",
            "--hours",
            "0.05",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["budget"] == 1024
    assert 0 < report["max_tokens"] <= report["layout_max_tokens"] <= 1024
    assert report["context_span_s"] == 180.0  # 3 minutes at 1 fps: nothing evicted yet
    for key in ("reprefill_ratio", "reprefill_worst_tokens", "utilisation", "reprefill_ratio_with_labels"):
        assert report[key] > 0, key


def test_cli_start_bench_runs_and_no_client_command_imports_torch() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cli_start.py"), "--json", "--repeat", "1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    rows = {r["command"]: r for r in json.loads(out.strip().splitlines()[-1])["results"]}
    for command in ("ask", "streams", "add", "remove", "status --follow", "watch", "watches", "events"):
        assert f"livesight {command} (no server)" in rows
    assert {name: r["imports"] for name, r in rows.items() if r["imports"]} == {}


@pytest.mark.slow
def test_watch_bench_runs_quick_and_its_alerts_are_right() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "watch.py"), "--quick"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["latency"]["recall"] == 1.0 and report["latency"]["precision"] == 1.0
    assert report["latency"]["websocket_latency_s"]["max"] < 5 and report["latency"]["webhook_latency_s"]
    assert report["cost"]["evaluation_ms"] > 0
    assert [r["streams"] for r in report["throughput"]] == [1, 2]


def test_shard_restart_bench_runs_and_times_every_step() -> None:
    """bench/shard_restart.py on a real local Ray cluster: one kill of one shard of two."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shard_restart.py"), "--json", "--kills", "1", "--streams", "2"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    (run,) = report["runs"]
    assert 0 < run["detect_s"] <= run["reopen_s"] <= run["live_s"] == report["live_s_median"]
    assert run["restored"] > 0  # the memory came back from the archive
