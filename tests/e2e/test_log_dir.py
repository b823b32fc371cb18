"""`--log-dir` in a real gateway: the access line of a request lands in the file (the
access log is buffered and written by its own task, not through `logging`)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import start_gateway, start_sim, wait_until


def test_the_access_line_of_a_request_reaches_the_log_file(tmp_path: Path) -> None:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    log_dir = tmp_path / "logs"  # missing: the gateway creates it
    gateway = start_gateway(sim.urls, "--log-dir", str(log_dir), "--log-json")
    try:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"x-request-id": "log-dir-1"})
        assert answer.status_code == 200
        log_file = log_dir / "smg.log"
        wait_until(lambda: '"request_id":"log-dir-1"' in log_file.read_text(), "the access line in the file")
        text = log_file.read_text()
        assert "smg gateway listening on" in text  # ordinary records too
        assert '"request_id":"log-dir-1"' in gateway.log()  # and the console still gets everything
    finally:
        gateway.stop()
        sim.stop()
