#!/usr/bin/env node
// The official TypeScript SDK client loses its standalone GET stream and gets it back.
//
// Usage: node standalone_reconnect.mjs <url>        e.g. http://127.0.0.1:8080/mcp
//
// The client connects (2025-11-25) and waits for its standalone GET stream. Twice it aborts
// that GET as a dropped connection does (the HTTP request is cancelled under the SDK): first
// when the stream has carried only its priming event, then after a notification. Each time the
// SDK reconnects by itself, with `Last-Event-ID` set to the last event id it saw (its own
// reconnection, default options: two retries). A notification sent while the client is away
// must be replayed on the new stream, and one sent afterwards must arrive on it.
//
// Exits 0 and prints one JSON object of observations on stdout when it all worked; exits 1
// with a "FAIL [step]: ..." line on stderr otherwise (the observations so far are printed too).
//
// The server must provide the tool `notify {message, delayMs?}` of examples/node.rs (sends
// `notifications/message` with `data: message` on the session's standalone GET stream).

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const OVERALL_TIMEOUT_MS = 60_000;
const WAIT_MS = 15_000;

const url = process.argv[2];
if (!url) {
    console.error('usage: node standalone_reconnect.mjs <url>');
    process.exit(2);
}

const out = { client: 'typescript-sdk', url, gets: [], messages: [], transport_errors: [] };
let step = 'setup';
function fail(message) {
    process.stdout.write(`${JSON.stringify(out)}\n`);
    console.error(`FAIL [${step}]: ${message}`);
    process.exit(1);
}

const watchdog = setTimeout(() => fail(`did not finish within ${OVERALL_TIMEOUT_MS} ms`), OVERALL_TIMEOUT_MS);
watchdog.unref();

// ---- every GET: its Last-Event-ID, its status, and a way to drop it -----------------------
const openGets = [];
const getWaiters = [];
async function droppableFetch(input, init) {
    const method = (init?.method ?? 'GET').toUpperCase();
    if (method !== 'GET') return fetch(input, init);
    const headers = new Headers(init?.headers);
    const drop = new AbortController();
    const signal = init?.signal ? AbortSignal.any([init.signal, drop.signal]) : drop.signal;
    const record = { last_event_id: headers.get('last-event-id'), status: null, node: null };
    out.gets.push(record);
    const response = await fetch(input, { ...init, signal });
    record.status = response.status;
    record.node = response.headers.get('x-mcp-node');
    if (!response.ok || !response.body) {
        for (const w of [...getWaiters]) w();
        return response;
    }
    // Note when the first event (the priming event) has passed by.
    record.primed = false;
    const body = response.body.pipeThrough(
        new TransformStream({
            transform(chunk, controller) {
                controller.enqueue(chunk);
                record.primed = true;
                for (const w of [...getWaiters]) w();
            }
        })
    );
    openGets.push({ record, drop });
    for (const w of [...getWaiters]) w();
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

function waitFor(condition, what) {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
        const check = () => {
            if (condition()) {
                clearTimeout(timer);
                getWaiters.splice(getWaiters.indexOf(check), 1);
                resolve();
            }
        };
        getWaiters.push(check);
    });
}

async function main() {
    const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: droppableFetch });
    const client = new Client({ name: 'mcp-affinity-ts-standalone-reconnect', version: '0.0.0' }, { capabilities: {} });
    client.onerror = err => out.transport_errors.push(String(err?.message ?? err));
    client.setNotificationHandler(LoggingMessageNotificationSchema, n => {
        out.messages.push(n.params.data);
        for (const w of [...getWaiters]) w();
    });
    const notify = message => client.callTool({ name: 'notify', arguments: { message, delayMs: 0 } });

    step = 'connect';
    await client.connect(transport);
    out.protocol_version = transport.protocolVersion ?? null;
    await waitFor(() => openGets.length === 1 && openGets[0].record.primed, 'standalone GET stream');

    // Dropped when only the priming event has arrived; what is sent meanwhile is replayed.
    step = 'drop after priming';
    openGets[0].drop.abort(new Error('connection dropped'));
    // Sent while the client is away: the node may still hold the dropped stream.
    await notify('while-away-1');
    step = 'reconnect after priming';
    await waitFor(() => openGets.length === 2, 'reconnected standalone GET stream');
    await waitFor(() => out.messages.includes('while-away-1'), '"while-away-1" replayed on the new stream');

    // Dropped after a notification.
    step = 'notification';
    await notify('before');
    await waitFor(() => out.messages.includes('before'), '"before" on the standalone stream');
    step = 'drop after a notification';
    openGets[1].drop.abort(new Error('connection dropped'));
    await notify('while-away-2');
    step = 'reconnect after a notification';
    await waitFor(() => openGets.length === 3, 'reconnected standalone GET stream');
    await waitFor(() => out.messages.includes('while-away-2'), '"while-away-2" replayed on the new stream');

    step = 'after';
    await notify('after');
    await waitFor(() => out.messages.includes('after'), '"after" on the new stream');

    step = 'close';
    await transport.terminateSession();
    await client.close();
    out.ok = true;
    process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().then(
    () => process.exit(0),
    err => fail(err?.stack ?? String(err))
);
