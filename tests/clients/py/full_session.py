#!/usr/bin/env python3
"""A full MCP session with the official Python SDK client (PyPI `mcp`, v2).

Usage: python full_session.py <url> [--era legacy|modern]     (default: legacy)

Exits 0 and prints one JSON object of observations on stdout when every step
passed; exits 1 with a "FAIL [step]: ..." line on stderr otherwise.

How the era is chosen: `mcp.Client(url, mode=...)`. `mode="legacy"` forces the
`initialize` handshake (the client offers 2025-11-25, the SDK's
LATEST_HANDSHAKE_VERSION); `mode="2026-07-28"` adopts the modern stateless
revision directly, without the `server/discover` probe that the default
`mode="auto"` would send.

What the server at <url> must provide:

legacy era (Streamable HTTP 2025-11-25, sessions):
  - `initialize` answered with protocol version 2025-11-25 and an
    `Mcp-Session-Id` header; a standalone GET SSE stream for the session;
  - tools `echo {text}` (returns `text`), `whoami` (returns the text
    `{"node": "<name>"}`), `notify {message, delayMs?}` (returns at once, then
    after `delayMs` sends `notifications/message` with `data: message` on the
    standalone GET stream), `progress {steps}` (sends `steps`
    `notifications/progress` for the call's progress token and at least one
    `notifications/message` on the request's stream, then returns "done"),
    `sample {prompt}` (sends `sampling/createMessage` to the client and returns
    the text of the answer);
  - DELETE with the session id answered 2xx (the SDK sends it when the client
    closes); afterwards a POST with that id answered HTTP 404 with a JSON-RPC
    error body.

modern era (2026-07-28, stateless):
  - POSTs carrying per-request `_meta` and `MCP-Protocol-Version: 2026-07-28`
    served without `initialize`: `tools/list`, `echo`, `whoami`, and `progress`
    (progress notifications on the request's own SSE stream);
  - no response ever carries `Mcp-Session-Id`.

Both eras: an `x-mcp-node` header on every response is optional and collected
into `nodes_seen`, so a cluster test can check that the traffic stayed on one node.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version as dist_version
from typing import Any, NoReturn

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
REQUIRED_TOOLS_LEGACY = ("echo", "whoami", "notify", "progress", "sample")
REQUIRED_TOOLS_MODERN = ("echo", "whoami", "progress")
STANDALONE_MARKER = "hello-standalone"
STANDALONE_WAIT_S = 5.0
OVERALL_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 20.0

_step = "setup"


class CheckFailed(Exception):
    """A step's expectation did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def die(message: str) -> NoReturn:
    print(f"FAIL [{_step}]: {message}", file=sys.stderr)
    sys.exit(1)


def set_step(name: str) -> None:
    global _step
    _step = name


def text_of(result: types.CallToolResult) -> str:
    check(not result.is_error, f"tool returned an error result: {result.model_dump(mode='json')}")
    check(bool(result.content), f"tool returned no content: {result.model_dump(mode='json')}")
    first = result.content[0]
    check(isinstance(first, types.TextContent), f"expected text content, got {first!r}")
    assert isinstance(first, types.TextContent)
    return first.text


class HttpObserver:
    """Records every HTTP exchange the SDK's httpx2 client makes."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.nodes_seen: set[str] = set()
        self.responses_without_node = 0
        self.session_ids_seen: list[str] = []

    async def on_response(self, response: httpx2.Response) -> None:
        node = response.headers.get("x-mcp-node")
        if node:
            self.nodes_seen.add(node)
        else:
            self.responses_without_node += 1
        sid = response.headers.get("mcp-session-id")
        if sid:
            self.session_ids_seen.append(sid)
        self.exchanges.append(
            {
                "method": response.request.method,
                "status": response.status_code,
                "node": node,
                "content_type": response.headers.get("content-type"),
                "mcp_session_id": sid,
            }
        )

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            timeout=httpx2.Timeout(30.0, read=300.0),
            event_hooks={"response": [self.on_response]},
        )


class LogCollector:
    """Collects `notifications/message` params and lets a step wait for one."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._events: dict[str, anyio.Event] = {}

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        data = params.data
        self.messages.append({"level": params.level, "data": data, "logger": params.logger})
        if isinstance(data, str) and data in self._events:
            self._events[data].set()

    def expect(self, data: str) -> anyio.Event:
        event = self._events.setdefault(data, anyio.Event())
        if any(m["data"] == data for m in self.messages):
            event.set()
        return event


async def sampling_callback(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    sampling_callback.calls += 1  # type: ignore[attr-defined]
    prompt = ""
    if params.messages:
        content = params.messages[-1].content
        if isinstance(content, types.TextContent):
            prompt = content.text
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled:{prompt}"),
        model="test",
    )


sampling_callback.calls = 0  # type: ignore[attr-defined]


async def common_calls(client: Client, out: dict[str, Any], required: tuple[str, ...]) -> None:
    set_step("tools/list")
    listed = await client.list_tools()
    out["tools"] = sorted(t.name for t in listed.tools)
    for name in required:
        check(name in out["tools"], f"tool {name} missing from {out['tools']}")

    set_step("echo")
    out["echo"] = text_of(await client.call_tool("echo", {"text": "hi"}, read_timeout_seconds=CALL_TIMEOUT_S))
    check(out["echo"] == "hi", f"echo returned {out['echo']!r}")

    set_step("whoami")
    who_text = text_of(await client.call_tool("whoami", {}, read_timeout_seconds=CALL_TIMEOUT_S))
    try:
        who = json.loads(who_text)
    except json.JSONDecodeError:
        raise CheckFailed(f"whoami text is not JSON: {who_text!r}") from None
    check(isinstance(who, dict) and isinstance(who.get("node"), str) and who["node"] != "", f"whoami returned {who_text}")
    out["node"] = who["node"]


async def progress_call(client: Client, logs: LogCollector, out: dict[str, Any]) -> None:
    set_step("progress")
    values: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        values.append(progress)

    logs_before = len(logs.messages)
    result = await client.call_tool(
        "progress", {"steps": 3}, read_timeout_seconds=CALL_TIMEOUT_S, progress_callback=on_progress
    )
    out["progress_result"] = text_of(result)
    out["progress_notifications"] = len(values)
    out["progress_values"] = values
    out["progress_log_messages"] = len(logs.messages) - logs_before
    check(len(values) >= 3, f"expected >= 3 progress notifications, got {len(values)}")
    check(out["progress_result"] == "done", f"progress returned {out['progress_result']!r}")


async def run_legacy(url: str, out: dict[str, Any], http: HttpObserver) -> None:
    logs = LogCollector()
    async with http.client() as http_client:
        transport = streamable_http_client(url, http_client=http_client, terminate_on_close=True)
        client = Client(
            transport,
            mode="legacy",
            sampling_callback=sampling_callback,
            logging_callback=logs,
            read_timeout_seconds=CALL_TIMEOUT_S,
            client_info=types.Implementation(name="mcp-affinity-py-full-session", version="0.0.0"),
        )
        set_step("connect")
        async with client:
            out["protocol_version"] = client.protocol_version
            check(
                client.protocol_version == LEGACY_VERSION,
                f"negotiated protocol version {client.protocol_version}, expected {LEGACY_VERSION}",
            )
            info = client.server_info
            out["server_info"] = info.model_dump(mode="json", exclude_none=True) if info else None
            check(bool(http.session_ids_seen), "no Mcp-Session-Id after initialize")
            session_id = http.session_ids_seen[0]
            out["session_id"] = session_id

            await common_calls(client, out, REQUIRED_TOOLS_LEGACY)

            set_step("sample")
            out["sampled_text"] = text_of(
                await client.call_tool("sample", {"prompt": "abc"}, read_timeout_seconds=CALL_TIMEOUT_S)
            )
            check("sampled:abc" in out["sampled_text"], f"sample returned {out['sampled_text']!r}")
            out["sampling_requests"] = sampling_callback.calls  # type: ignore[attr-defined]
            check(out["sampling_requests"] >= 1, "the sampling callback was never called")

            await progress_call(client, logs, out)
            check(out["progress_log_messages"] >= 1, "no notifications/message received during the progress call")

            set_step("standalone-notify")
            arrived = logs.expect(STANDALONE_MARKER)
            started = anyio.current_time()
            await client.call_tool(
                "notify", {"message": STANDALONE_MARKER, "delayMs": 100}, read_timeout_seconds=CALL_TIMEOUT_S
            )
            with anyio.move_on_after(STANDALONE_WAIT_S):
                await arrived.wait()
            gets = [e for e in http.exchanges if e["method"] == "GET"]
            out["standalone_get_status"] = gets[0]["status"] if gets else None
            check(
                arrived.is_set(),
                f'no notifications/message "{STANDALONE_MARKER}" within {STANDALONE_WAIT_S} s '
                f"(standalone GET status: {out['standalone_get_status']})",
            )
            out["standalone_wait_ms"] = round((anyio.current_time() - started) * 1000)
            out["standalone_notification"] = next(m for m in logs.messages if m["data"] == STANDALONE_MARKER)

            set_step("delete")
            before_delete = len(http.exchanges)
        # Leaving the client context closes the SDK transport, which sends DELETE
        # (terminate_on_close=True).
        deletes = [e for e in http.exchanges[before_delete:] if e["method"] == "DELETE"]
        check(bool(deletes), "closing the client sent no DELETE")
        out["delete_status"] = deletes[0]["status"]
        check(200 <= deletes[0]["status"] < 300, f"DELETE answered {deletes[0]['status']}")

        set_step("post-after-delete")
        response = await http_client.post(
            url,
            headers={
                "mcp-session-id": session_id,
                "mcp-protocol-version": LEGACY_VERSION,
                "accept": "application/json, text/event-stream",
                "content-type": "application/json",
            },
            content=json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}),
        )
        out["post_after_delete_status"] = response.status_code
        check(
            response.status_code == 404,
            f"POST with the terminated session id answered {response.status_code}: {response.text}",
        )
        try:
            body = response.json()
        except ValueError:
            raise CheckFailed(f"404 body is not JSON: {response.text!r}") from None
        check(
            isinstance(body, dict)
            and body.get("jsonrpc") == "2.0"
            and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("code"), int)
            and isinstance(body["error"].get("message"), str),
            f"404 body is not a JSON-RPC error: {response.text}",
        )
        out["post_after_delete_body"] = body


async def run_modern(url: str, out: dict[str, Any], http: HttpObserver) -> None:
    logs = LogCollector()
    async with http.client() as http_client:
        transport = streamable_http_client(url, http_client=http_client)
        client = Client(
            transport,
            mode=MODERN_VERSION,
            logging_callback=logs,
            log_level="info",
            read_timeout_seconds=CALL_TIMEOUT_S,
            cache=None,
            client_info=types.Implementation(name="mcp-affinity-py-full-session", version="0.0.0"),
        )
        set_step("connect")
        async with client:
            out["protocol_version"] = client.protocol_version
            check(
                client.protocol_version == MODERN_VERSION,
                f"protocol version {client.protocol_version}, expected {MODERN_VERSION}",
            )
            await common_calls(client, out, REQUIRED_TOOLS_MODERN)
            await progress_call(client, logs, out)
            progress_posts = [e for e in http.exchanges if e["method"] == "POST"]
            out["progress_response_content_type"] = progress_posts[-1]["content_type"] if progress_posts else None

    set_step("no-session-id")
    check(
        not http.session_ids_seen,
        f"modern-era responses carried Mcp-Session-Id: {http.session_ids_seen}",
    )
    methods = sorted({e["method"] for e in http.exchanges})
    check(methods == ["POST"], f"modern era must use POST only, saw {methods}")


async def main_async(url: str, era: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "client": "python-sdk",
        "sdk_version": dist_version("mcp"),
        "era": era,
        "url": url,
    }
    http = HttpObserver()
    with anyio.fail_after(OVERALL_TIMEOUT_S):
        if era == "legacy":
            await run_legacy(url, out, http)
        else:
            await run_modern(url, out, http)
    out["nodes_seen"] = sorted(http.nodes_seen)
    out["responses_total"] = len(http.exchanges)
    out["responses_without_node_header"] = http.responses_without_node
    out["session_ids_seen"] = sorted(set(http.session_ids_seen))
    out["http_exchanges"] = http.exchanges
    out["ok"] = True
    return out


def first_leaf(exc: BaseException) -> BaseException:
    """Unwraps exception groups raised by anyio task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--era", choices=("legacy", "modern"), default="legacy")
    args = parser.parse_args()
    try:
        out = anyio.run(main_async, args.url, args.era)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one clear line
        if isinstance(exc, SystemExit):
            raise
        leaf = first_leaf(exc)
        if isinstance(leaf, CheckFailed):
            die(str(leaf))
        if isinstance(leaf, TimeoutError):
            die(f"timed out (overall limit {OVERALL_TIMEOUT_S} s)")
        die(f"{type(leaf).__name__}: {leaf}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
