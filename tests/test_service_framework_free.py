"""The service's reusable core, without a web framework: the registry, codec, auth, errors and the server state
import no FastAPI, starlette, uvicorn or Prometheus, and run a stream on their own (as a second server path
would); the refusal tables, one row at a time."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from service_streams import MODEL_PATH, chunks, offline

from edge_rnn.errors import InferenceError, NonFiniteError, ShapeError, StateError, StreamError
from edge_rnn.runtime import StreamingModel
from edge_rnn.service import Overloaded, ServiceConfig, ShuttingDown
from edge_rnn.service._auth import ScopeHeaders, authorize
from edge_rnn.service._errors import Refusal, refusal
from edge_rnn.service._service import Service

FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "prometheus_client")
CORE = ("_config", "_status", "_recorder", "_errors", "_codec", "_registry", "_auth", "_service", "_socket", "_batcher",
        "_body", "_json", "_connection")


def test_the_core_modules_import_with_no_web_framework_or_prometheus_installed():
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in FRAMEWORKS)  # a None entry: ImportError on import
    imports = "; ".join(f"import edge_rnn.service.{m}" for m in CORE)
    code = (f"import sys; {blocked}; import edge_rnn.service; {imports}; "
            "print(edge_rnn.service.ServiceConfig().max_streams)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1000", done.stderr


class _Counted:
    """A recorder that keeps the rejections it was told of."""

    def __init__(self):
        self.rejected: list[str] = []

    def reject(self, reason: str) -> None:
        self.rejected.append(reason)


def test_a_stream_runs_through_the_service_state_alone():
    parts = chunks(np.random.default_rng(7), 20)

    async def main():
        svc = Service(StreamingModel.load(MODEL_PATH), ServiceConfig(max_wait_ms=0))
        svc.start()
        sid = svc.registry.open()
        entry = svc.registry.get(sid)
        replies = [svc.codec.encode(await svc.step(entry, svc.codec.decode(c.tobytes()))) for c in parts]
        svc.registry.close(sid)
        await svc.stop()
        return replies, sid in svc.registry.streams

    replies, still_open = asyncio.run(main())
    np.testing.assert_array_equal(np.frombuffer(b"".join(replies), "<f4").reshape(-1, 6), offline(parts))
    assert not still_open


@pytest.mark.parametrize("error, status, code, counted, retry_after", [
    (Overloaded("full"), 503, "overloaded", ["overloaded"], 1),
    (ShuttingDown("stopping"), 503, "shutting_down", [], None),
    (ShapeError("bad shape"), 400, "bad_chunk", ["bad_chunk"], None),
    (NonFiniteError("nan"), 400, "bad_chunk", ["bad_chunk"], None),
    (StreamError("closed"), 404, "unknown_stream", [], None),
    (InferenceError("failed"), 500, "inference_failed", [], None),
    (StateError("other"), 400, "error", [], None),
])
def test_an_engine_error_is_refused_with_its_status_and_code(error, status, code, counted, retry_after):
    metrics = _Counted()
    r = refusal(error, metrics)
    assert (r.status, r.code, r.message, r.retry_after, metrics.rejected) == (
        status, code, str(error), retry_after, counted)


@pytest.mark.parametrize("status, code, close", [
    (400, "bad_chunk", 1007), (413, "too_large", 1009), (415, "unsupported", 1003), (429, "too_many_streams", 1013),
    (503, "overloaded", 1013), (401, "unauthorized", 1008), (404, "unknown_stream", 1008),
    (500, "inference_failed", 1011), (503, "shutting_down", 1001), (409, "out_of_order", 1011),
])
def test_a_refusal_closes_a_websocket_with_the_code_its_status_maps_to(status, code, close):
    assert Refusal(status, code, "why").close_code == close


def test_a_wrong_token_is_refused_and_counted_and_the_right_one_passes():
    metrics = _Counted()
    right = ScopeHeaders({"headers": [(b"Authorization", b"Bearer a-token-of-sixteen-chars")]})
    authorize("a-token-of-sixteen-chars", right, metrics)
    authorize(None, ScopeHeaders({}), metrics)  # no token configured: everyone passes
    with pytest.raises(Refusal, match="expected Authorization: Bearer <token>") as refused:
        authorize("a-token-of-sixteen-chars", ScopeHeaders({"headers": [(b"authorization", b"Bearer no")]}), metrics)
    assert refused.value.status == 401 and metrics.rejected == ["unauthorized"]

