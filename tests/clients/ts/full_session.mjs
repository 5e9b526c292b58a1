#!/usr/bin/env node
// Full legacy-era (2025-11-25) MCP session with the official TypeScript SDK client.
//
// Usage: node full_session.mjs <url>        e.g. http://127.0.0.1:8080/mcp
//
// Exits 0 and prints one JSON object of observations on stdout when every step
// passed; exits 1 with a "FAIL [step]: ..." line on stderr otherwise.
//
// What the server at <url> must provide (Streamable HTTP, sessions enabled):
//   - `initialize` answered with protocol version 2025-11-25 and an
//     `Mcp-Session-Id` header; a standalone GET SSE stream for the session;
//   - tools `echo {text}` (returns `text`), `whoami` (returns the text
//     `{"node": "<name>"}`), `notify {message, delayMs?}` (returns at once, then
//     after `delayMs` sends `notifications/message` with `data: message` on the
//     session's standalone GET stream), `progress {steps}` (sends `steps`
//     `notifications/progress` for the call's progress token and at least one
//     `notifications/message` on the request's stream, then returns "done"),
//     `sample {prompt}` (sends `sampling/createMessage` to the client and
//     returns the text of the answer);
//   - DELETE with the session id answered 2xx; afterwards a POST with that id
//     answered HTTP 404 with a JSON-RPC error body;
//   - optionally an `x-mcp-node` header on every response (collected into
//     `nodes_seen` so a cluster test can check that a session stayed on one node).

import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
    CreateMessageRequestSchema,
    LoggingMessageNotificationSchema
} from '@modelcontextprotocol/sdk/types.js';

const OVERALL_TIMEOUT_MS = 60_000;
const STANDALONE_WAIT_MS = 5_000;
const REQUIRED_TOOLS = ['echo', 'whoami', 'notify', 'progress', 'sample'];
const LEGACY_VERSION = '2025-11-25';

const url = process.argv[2];
if (!url) {
    console.error('usage: node full_session.mjs <url>');
    process.exit(2);
}

let step = 'setup';
function fail(message) {
    console.error(`FAIL [${step}]: ${message}`);
    process.exit(1);
}
function check(condition, message) {
    if (!condition) fail(message);
}

const watchdog = setTimeout(() => fail(`session did not finish within ${OVERALL_TIMEOUT_MS} ms`), OVERALL_TIMEOUT_MS);
watchdog.unref();

function sdkVersion() {
    try {
        const pkg = new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url);
        return JSON.parse(readFileSync(pkg, 'utf8')).version ?? 'unknown';
    } catch {
        return 'unknown';
    }
}

// ---- HTTP observation: every response's status and x-mcp-node header -------
const nodesSeen = new Set();
const exchanges = [];
let responsesWithoutNode = 0;
let standaloneGetStatus = null;
let standaloneGetSawMarker = false;
const STANDALONE_MARKER = 'hello-standalone';

// Copies an SSE body through, noting whether the standalone marker passed by.
function watchStandaloneBody(body) {
    const decoder = new TextDecoder();
    let tail = '';
    return body.pipeThrough(
        new TransformStream({
            transform(chunk, controller) {
                const text = tail + decoder.decode(chunk, { stream: true });
                if (text.includes(STANDALONE_MARKER)) standaloneGetSawMarker = true;
                tail = text.slice(-STANDALONE_MARKER.length);
                controller.enqueue(chunk);
            }
        })
    );
}

async function observingFetch(input, init) {
    const method = (init?.method ?? 'GET').toUpperCase();
    const response = await fetch(input, init);
    const node = response.headers.get('x-mcp-node');
    if (node) nodesSeen.add(node);
    else responsesWithoutNode += 1;
    exchanges.push({ method, status: response.status, node });
    const contentType = response.headers.get('content-type') ?? '';
    if (method === 'GET' && response.ok && contentType.startsWith('text/event-stream') && response.body) {
        standaloneGetStatus = response.status;
        return new Response(watchStandaloneBody(response.body), {
            status: response.status,
            statusText: response.statusText,
            headers: response.headers
        });
    }
    if (method === 'GET' && standaloneGetStatus === null) standaloneGetStatus = response.status;
    return response;
}

// ---- notification plumbing --------------------------------------------------
const logMessages = [];
const logWaiters = [];
function waitForLog(predicate, timeoutMs, what) {
    const found = logMessages.find(predicate);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
        const waiter = { predicate, resolve };
        const timer = setTimeout(() => {
            logWaiters.splice(logWaiters.indexOf(waiter), 1);
            reject(new Error(`no ${what} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiter.resolve = value => {
            clearTimeout(timer);
            resolve(value);
        };
        logWaiters.push(waiter);
    });
}

function textOf(result) {
    const first = result?.content?.[0];
    check(first && first.type === 'text' && typeof first.text === 'string', `expected text content, got ${JSON.stringify(result)}`);
    return first.text;
}

async function main() {
    const transportErrors = [];
    const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: observingFetch });
    const client = new Client(
        { name: 'mcp-affinity-ts-full-session', version: '0.0.0' },
        { capabilities: { sampling: {} } }
    );
    client.onerror = err => transportErrors.push(String(err?.message ?? err));

    let samplingRequests = 0;
    client.setRequestHandler(CreateMessageRequestSchema, async request => {
        samplingRequests += 1;
        const messages = request.params.messages ?? [];
        const content = messages[messages.length - 1]?.content;
        const prompt = content && !Array.isArray(content) && content.type === 'text' ? content.text : '';
        return {
            role: 'assistant',
            content: { type: 'text', text: `sampled:${prompt}` },
            model: 'test'
        };
    });
    client.setNotificationHandler(LoggingMessageNotificationSchema, notification => {
        const params = notification.params;
        logMessages.push(params);
        for (const waiter of [...logWaiters]) {
            if (waiter.predicate(params)) {
                logWaiters.splice(logWaiters.indexOf(waiter), 1);
                waiter.resolve(params);
            }
        }
    });

    const out = { client: 'typescript-sdk', sdk_version: sdkVersion(), url };

    step = 'connect';
    await client.connect(transport);
    const sessionId = transport.sessionId;
    check(typeof sessionId === 'string' && sessionId.length > 0, 'no Mcp-Session-Id after initialize');
    out.session_id = sessionId;
    out.protocol_version = transport.protocolVersion ?? null;
    check(out.protocol_version === LEGACY_VERSION, `negotiated protocol version ${out.protocol_version}, expected ${LEGACY_VERSION}`);
    out.server_info = client.getServerVersion() ?? null;

    step = 'tools/list';
    const listed = await client.listTools();
    out.tools = listed.tools.map(t => t.name).sort();
    for (const name of REQUIRED_TOOLS) check(out.tools.includes(name), `tool ${name} missing from ${JSON.stringify(out.tools)}`);

    step = 'echo';
    out.echo = textOf(await client.callTool({ name: 'echo', arguments: { text: 'hi' } }));
    check(out.echo === 'hi', `echo returned ${JSON.stringify(out.echo)}`);

    step = 'whoami';
    const whoText = textOf(await client.callTool({ name: 'whoami', arguments: {} }));
    let who;
    try {
        who = JSON.parse(whoText);
    } catch {
        fail(`whoami text is not JSON: ${JSON.stringify(whoText)}`);
    }
    check(typeof who?.node === 'string' && who.node.length > 0, `whoami returned ${whoText}`);
    out.node = who.node;

    step = 'sample';
    out.sampled_text = textOf(await client.callTool({ name: 'sample', arguments: { prompt: 'abc' } }));
    check(out.sampled_text.includes('sampled:abc'), `sample returned ${JSON.stringify(out.sampled_text)}`);
    check(samplingRequests >= 1, 'the sampling handler was never called');
    out.sampling_requests = samplingRequests;

    step = 'progress';
    const progressValues = [];
    const logsBefore = logMessages.length;
    const progressResult = await client.callTool({ name: 'progress', arguments: { steps: 3 } }, undefined, {
        onprogress: p => progressValues.push(p.progress)
    });
    out.progress_result = textOf(progressResult);
    out.progress_notifications = progressValues.length;
    out.progress_values = progressValues;
    out.progress_log_messages = logMessages.length - logsBefore;
    check(out.progress_notifications >= 3, `expected >= 3 progress notifications, got ${out.progress_notifications}`);
    check(out.progress_log_messages >= 1, 'no notifications/message received during the progress call');
    check(out.progress_result === 'done', `progress returned ${JSON.stringify(out.progress_result)}`);

    step = 'standalone-notify';
    const arrived = waitForLog(p => p.data === STANDALONE_MARKER, STANDALONE_WAIT_MS, `notifications/message "${STANDALONE_MARKER}"`);
    const started = Date.now();
    await client.callTool({ name: 'notify', arguments: { message: STANDALONE_MARKER, delayMs: 100 } });
    try {
        const params = await arrived;
        out.standalone_notification = params;
    } catch (e) {
        fail(`${e.message} (standalone GET status: ${standaloneGetStatus})`);
    }
    out.standalone_wait_ms = Date.now() - started;
    out.standalone_get_status = standaloneGetStatus;
    out.standalone_via_get = standaloneGetSawMarker;
    check(standaloneGetStatus === 200, `standalone GET stream answered ${standaloneGetStatus}`);
    check(standaloneGetSawMarker, 'the notification did not arrive on the standalone GET stream');

    step = 'delete';
    const beforeDelete = exchanges.length;
    await transport.terminateSession();
    const del = exchanges.slice(beforeDelete).find(e => e.method === 'DELETE');
    check(del !== undefined, 'terminateSession sent no DELETE');
    out.delete_status = del.status;
    check(del.status >= 200 && del.status < 300, `DELETE answered ${del.status}`);

    step = 'post-after-delete';
    const response = await observingFetch(url, {
        method: 'POST',
        headers: {
            'mcp-session-id': sessionId,
            'mcp-protocol-version': LEGACY_VERSION,
            accept: 'application/json, text/event-stream',
            'content-type': 'application/json'
        },
        body: JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'tools/list' })
    });
    out.post_after_delete_status = response.status;
    const bodyText = await response.text();
    check(response.status === 404, `POST with the terminated session id answered ${response.status}: ${bodyText}`);
    let body;
    try {
        body = JSON.parse(bodyText);
    } catch {
        fail(`404 body is not JSON: ${JSON.stringify(bodyText)}`);
    }
    check(body?.jsonrpc === '2.0' && typeof body?.error?.code === 'number' && typeof body?.error?.message === 'string',
        `404 body is not a JSON-RPC error: ${bodyText}`);
    out.post_after_delete_body = body;

    step = 'close';
    await client.close();

    out.nodes_seen = [...nodesSeen].sort();
    out.responses_total = exchanges.length;
    out.responses_without_node_header = responsesWithoutNode;
    out.http_exchanges = exchanges;
    out.transport_errors = transportErrors;
    out.ok = true;
    process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().then(
    () => process.exit(0),
    err => fail(err?.stack ?? String(err))
);
