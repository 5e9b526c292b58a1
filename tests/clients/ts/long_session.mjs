#!/usr/bin/env node
// A long legacy-era (2025-11-25) MCP session with the official TypeScript SDK client: it holds
// its standalone GET stream and calls `echo` in a loop until told to stop, counting what fails.
//
// Usage: node long_session.mjs <url> <stop-file> [--pace-ms N]
//        (the stop file may also be given as MCP_STOP_FILE; pace default 200 ms)
//
// The client connects (initialize, notifications/initialized; the SDK then opens the standalone
// GET stream by itself), waits until that stream is open and prints `ready <json>` on stdout
// ({session_id, node: the x-mcp-node of the initialize answer, get_open}).
// Whenever a standalone GET stream opens it prints `get open <json>` ({node: its x-mcp-node,
// last_event_id: the Last-Event-ID it resumed from, or null}), and `get end <json>` when the
// server ended one cleanly ({last_broadcast: the last `bcast-` log message the stream carried,
// or null}).
// Then, until <stop-file> exists, it calls `echo {text}` every <pace> ms and prints `ok <n>` after
// each call that returned its text. A call that throws (or returns anything else) is a failed
// call; the loop goes on. When a call fails because the server no longer knows the session
// (HTTP 404), the client does what a real application does: it connects again with a new
// session (a re-initialization, counted) and goes on.
//
// When the stop file appears: one `notify` call asks the server to send a log message on the
// standalone stream, which must arrive within 10 s (the stream still works after whatever
// happened meanwhile); then DELETE ends the session. Every log message whose data is a string
// starting with `bcast-` is recorded meanwhile, whichever session of the client it came on.
// Finally one JSON report line on stdout:
//
//   calls, ok, failed, reinitialized   the echo calls (the final notify counts as a call)
//   session_ids                        every session used, in order (1 when none was lost)
//   nodes_seen, node_counts            `x-mcp-node` of the POST responses
//   errors                             the first 20 failures: {call, message, code}
//   http_failures                      non-2xx responses by "METHOD status" (any request,
//                                      the SDK's own GET reconnections included)
//   fetch_errors                       requests that got no HTTP answer, by method (not
//                                      counting the ones this script aborts when it closes
//                                      a client)
//   get_streams                        standalone GETs answered 200 with an event stream;
//   get_resumed                        how many of them carried Last-Event-ID;
//   get_stream_ends                    how many the server ended cleanly (a broken connection
//                                      shows in transport_errors instead)
//   transport_errors, transport_errors_sample   what the SDK reported through onerror
//   final_notify                       true when the final notification arrived on the stream
//   delete_status                      the status of the final DELETE
//   broadcasts                         the distinct `bcast-<n>` log messages received (the
//                                      node's `broadcast` tool), in the order of <n>
//   broadcast_duplicates               how many of them arrived more than once;
//   broadcasts_repeated                which ones (same order)
//
// Exits 0 after the report; 1 (after the report too) if the script itself breaks; 2 on bad
// usage. It never exits on a failed call.

import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const CALL_TIMEOUT_MS = 15_000;
const GET_OPEN_WAIT_MS = 10_000;
const FINAL_NOTIFY_WAIT_MS = 10_000;
const MAX_ERRORS_KEPT = 20;

const args = process.argv.slice(2);
const url = args[0];
let stopFile = args[1] && !args[1].startsWith('--') ? args[1] : process.env.MCP_STOP_FILE;
let paceMs = 200;
for (let i = 1; i < args.length; i++) {
    if (args[i] === '--pace-ms') paceMs = Number(args[++i]);
}
if (!url || !stopFile || !Number.isFinite(paceMs) || paceMs < 0) {
    console.error('usage: node long_session.mjs <url> <stop-file> [--pace-ms N]  (or MCP_STOP_FILE)');
    process.exit(2);
}

function sdkVersion() {
    try {
        const pkg = new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url);
        return JSON.parse(readFileSync(pkg, 'utf8')).version ?? 'unknown';
    } catch {
        return 'unknown';
    }
}

const out = {
    client: 'typescript-sdk',
    sdk_version: sdkVersion(),
    url,
    pace_ms: paceMs,
    calls: 0,
    ok: 0,
    failed: 0,
    reinitialized: 0,
    session_ids: [],
    nodes_seen: [],
    node_counts: {},
    errors: [],
    http_failures: {},
    fetch_errors: {},
    get_streams: 0,
    get_resumed: 0,
    get_stream_ends: 0,
    transport_errors: 0,
    transport_errors_sample: [],
    final_notify: false,
    delete_status: null,
    broadcasts: [],
    broadcast_duplicates: 0,
    broadcasts_repeated: []
};

// An error's message with its cause (`fetch failed` says nothing without `ECONNREFUSED` & co).
function describe(err) {
    const message = String(err?.message ?? err);
    const cause = err?.cause;
    const detail = cause ? `: ${cause.code ?? ''} ${cause.message ?? cause}`.trimEnd() : '';
    return `${message}${detail}`.slice(0, 300);
}

function noteError(call, err) {
    if (out.errors.length >= MAX_ERRORS_KEPT) return;
    out.errors.push({ call, message: describe(err), code: err?.code ?? null });
}

// Nothing the SDK does in the background may end the process.
process.on('unhandledRejection', err => {
    out.transport_errors += 1;
    if (out.transport_errors_sample.length < MAX_ERRORS_KEPT) {
        out.transport_errors_sample.push(`unhandled: ${describe(err)}`);
    }
});

// ---- HTTP observation -------------------------------------------------------------------
// Requests of a client this script is closing are aborted on purpose: not counted.
let generation = 0;
// `x-mcp-node` of the last response that carried `Mcp-Session-Id` (the `initialize` answer).
let initNode = null;
const getOpenWaiters = [];

// The data of a `bcast-` log message in one SSE line, if it is one.
function broadcastIn(line) {
    if (!line.startsWith('data:')) return null;
    try {
        const data = JSON.parse(line.slice(5)).params?.data;
        return typeof data === 'string' && data.startsWith('bcast-') ? data : null;
    } catch {
        return null;
    }
}

// A standalone stream, passed on as it is; its end is counted and printed with the last
// broadcast it carried (read here: the SDK may not have handled the last chunk yet).
function countedStream(body) {
    const decoder = new TextDecoder();
    let partial = '';
    let lastBroadcast = null;
    return body.pipeThrough(
        new TransformStream({
            transform(chunk, controller) {
                const lines = (partial + decoder.decode(chunk, { stream: true })).split('\n');
                partial = lines.pop();
                for (const line of lines) lastBroadcast = broadcastIn(line) ?? lastBroadcast;
                controller.enqueue(chunk);
            },
            flush() {
                out.get_stream_ends += 1;
                const ended = { last_broadcast: lastBroadcast };
                process.stdout.write(`get end ${JSON.stringify(ended)}\n`);
            }
        })
    );
}

function observingFetchFor(myGeneration) {
    return async (input, init) => {
        const method = (init?.method ?? 'GET').toUpperCase();
        const headers = new Headers(init?.headers);
        let response;
        try {
            response = await fetch(input, init);
        } catch (err) {
            if (myGeneration === generation && !init?.signal?.aborted) {
                out.fetch_errors[method] = (out.fetch_errors[method] ?? 0) + 1;
            }
            throw err;
        }
        if (method === 'DELETE') out.delete_status = response.status;
        const node = response.headers.get('x-mcp-node');
        if (method === 'POST' && response.headers.get('mcp-session-id')) initNode = node;
        if (method === 'POST' && node) {
            if (!out.nodes_seen.includes(node)) out.nodes_seen.push(node);
            out.node_counts[node] = (out.node_counts[node] ?? 0) + 1;
        }
        if (!response.ok) {
            const label = `${method} ${response.status}`;
            out.http_failures[label] = (out.http_failures[label] ?? 0) + 1;
            return response;
        }
        const contentType = response.headers.get('content-type') ?? '';
        if (method === 'GET' && contentType.startsWith('text/event-stream') && response.body) {
            out.get_streams += 1;
            if (headers.get('last-event-id')) out.get_resumed += 1;
            const opened = { node, last_event_id: headers.get('last-event-id') };
            process.stdout.write(`get open ${JSON.stringify(opened)}\n`);
            for (const w of getOpenWaiters.splice(0)) w();
            const wrapped = new Response(countedStream(response.body), {
                status: response.status,
                statusText: response.statusText,
                headers: response.headers
            });
            return wrapped;
        }
        return response;
    };
}

// ---- log messages (the final notify, broadcasts) ------------------------------------------
const logMessages = [];
const logWaiters = [];
// `bcast-<n>` data → how many times it arrived.
const broadcastsSeen = new Map();

function onLogMessage(data) {
    if (typeof data === 'string' && data.startsWith('bcast-')) {
        broadcastsSeen.set(data, (broadcastsSeen.get(data) ?? 0) + 1);
        return;
    }
    logMessages.push(data);
    for (const w of [...logWaiters]) {
        if (w(data)) logWaiters.splice(logWaiters.indexOf(w), 1);
    }
}

function broadcastReport() {
    const n = s => Number(s.slice('bcast-'.length));
    const keys = [...broadcastsSeen.keys()];
    keys.sort((a, b) => n(a) - n(b) || a.localeCompare(b));
    out.broadcasts = keys;
    out.broadcasts_repeated = keys.filter(k => broadcastsSeen.get(k) > 1);
    out.broadcast_duplicates = out.broadcasts_repeated.length;
}

function waitForLog(data, timeoutMs) {
    if (logMessages.includes(data)) return Promise.resolve(true);
    return new Promise(resolve => {
        const waiter = d => {
            if (d !== data) return false;
            clearTimeout(timer);
            resolve(true);
            return true;
        };
        const timer = setTimeout(() => {
            logWaiters.splice(logWaiters.indexOf(waiter), 1);
            resolve(false);
        }, timeoutMs);
        logWaiters.push(waiter);
    });
}

function waitForGetOpen(before, timeoutMs) {
    if (out.get_streams > before) return Promise.resolve(true);
    return new Promise(resolve => {
        const timer = setTimeout(() => resolve(false), timeoutMs);
        getOpenWaiters.push(() => {
            clearTimeout(timer);
            resolve(true);
        });
    });
}

// ---- one session --------------------------------------------------------------------------
let client = null;
let transport = null;

async function connect() {
    generation += 1;
    const mine = generation;
    const t = new StreamableHTTPClientTransport(new URL(url), { fetch: observingFetchFor(mine) });
    const c = new Client({ name: 'mcp-affinity-ts-long-session', version: '0.0.0' }, { capabilities: {} });
    c.onerror = err => {
        if (mine !== generation) return;
        out.transport_errors += 1;
        if (out.transport_errors_sample.length < MAX_ERRORS_KEPT) {
            out.transport_errors_sample.push(describe(err));
        }
    };
    c.setNotificationHandler(LoggingMessageNotificationSchema, n => onLogMessage(n.params?.data));
    const getsBefore = out.get_streams;
    await c.connect(t);
    client = c;
    transport = t;
    out.session_ids.push(t.sessionId ?? null);
    out.protocol_version = t.protocolVersion ?? null;
    return waitForGetOpen(getsBefore, GET_OPEN_WAIT_MS);
}

async function dropClient() {
    const c = client;
    client = null;
    transport = null;
    generation += 1; // what the old client does from now on is not counted
    if (c) await c.close().catch(() => {});
}

function sessionGone(err) {
    return err?.code === 404;
}

async function main() {
    // The first connection: retried until it works (failures counted), then `ready`.
    let getOpen = false;
    for (;;) {
        try {
            getOpen = await connect();
            break;
        } catch (err) {
            out.failed += 1;
            noteError('connect', err);
            await dropClient();
            if (existsSync(stopFile)) break;
            await sleep(paceMs);
        }
    }
    out.get_open_at_ready = getOpen;
    const ready = { session_id: transport?.sessionId ?? null, node: initNode, get_open: getOpen };
    process.stdout.write(`ready ${JSON.stringify(ready)}\n`);

    let needsSession = client === null;
    while (!existsSync(stopFile)) {
        out.calls += 1;
        const n = out.calls;
        try {
            if (needsSession) {
                await dropClient();
                out.reinitialized += 1;
                await connect();
                needsSession = false;
            }
            const text = `c${n}`;
            const result = await client.callTool({ name: 'echo', arguments: { text } }, undefined, {
                timeout: CALL_TIMEOUT_MS
            });
            const got = result?.content?.[0]?.text;
            if (got !== text) throw new Error(`echo returned ${JSON.stringify(result)}`);
            out.ok += 1;
            process.stdout.write(`ok ${out.ok}\n`);
        } catch (err) {
            out.failed += 1;
            noteError(n, err);
            if (sessionGone(err)) needsSession = true;
        }
        await sleep(paceMs);
    }

    // The standalone stream still delivers.
    if (client && !needsSession) {
        out.calls += 1;
        const marker = `final-${transport.sessionId}`;
        const arrived = waitForLog(marker, FINAL_NOTIFY_WAIT_MS);
        try {
            await client.callTool({ name: 'notify', arguments: { message: marker, delayMs: 0 } }, undefined, {
                timeout: CALL_TIMEOUT_MS
            });
            out.ok += 1;
            out.final_notify = await arrived;
        } catch (err) {
            out.failed += 1;
            noteError('final notify', err);
        }
        // DELETE ends the session (the fetch wrapper records its status).
        try {
            await transport.terminateSession();
        } catch (err) {
            noteError('delete', err);
        }
    }
    await dropClient();
    out.session_ids = out.session_ids.filter(s => s !== null);
    out.nodes_seen.sort();
    broadcastReport();
    process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().then(
    () => process.exit(0),
    err => {
        noteError('main', err);
        broadcastReport();
        process.stdout.write(`${JSON.stringify(out)}\n`);
        process.exit(1);
    }
);
