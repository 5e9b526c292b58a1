#!/usr/bin/env node
// A legacy-era (2025-11-25) session with the official TypeScript SDK 1.x client that holds its
// standalone GET stream and reports the list-change notifications arriving on it.
//
// Usage: node legacy_listen.mjs <url> [--expect N] [--timeout MS]
//
// One JSON object per line on stdout, as things happen:
//   {"event":"ready","session_id":…,"node":…}   initialized, and the GET stream is open
//                                                (node: x-mcp-node of the initialize answer)
//   {"event":"notification","method":…}         a tools/prompts/resources list_changed
//   {"event":"error","message":…}               then exit 1
// Exits 0 after N notifications (without --expect it runs until killed); 1 on an error or when
// --timeout (default 60000 ms) passes first; 2 on bad usage.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
    PromptListChangedNotificationSchema,
    ResourceListChangedNotificationSchema,
    ToolListChangedNotificationSchema
} from '@modelcontextprotocol/sdk/types.js';

const args = process.argv.slice(2);
const url = args[0];
let expect = Infinity;
let timeoutMs = 60_000;
for (let i = 1; i < args.length; i++) {
    if (args[i] === '--expect') expect = Number(args[++i]);
    else if (args[i] === '--timeout') timeoutMs = Number(args[++i]);
}
if (!url || !(expect > 0) || !(timeoutMs > 0)) {
    console.error('usage: node legacy_listen.mjs <url> [--expect N] [--timeout MS]');
    process.exit(2);
}

const emit = obj => process.stdout.write(`${JSON.stringify(obj)}\n`);
const fail = message => {
    emit({ event: 'error', message: String(message).slice(0, 500) });
    process.exit(1);
};
setTimeout(() => fail(`timeout after ${timeoutMs} ms`), timeoutMs).unref();
process.on('unhandledRejection', err => fail(`unhandled: ${err?.message ?? err}`));

// The GET stream is open once a GET is answered 200 with an event stream.
let initNode = null;
let getOpen;
const getOpened = new Promise(resolve => (getOpen = resolve));
const observingFetch = async (input, init) => {
    const method = (init?.method ?? 'GET').toUpperCase();
    const response = await fetch(input, init);
    if (method === 'POST' && response.headers.get('mcp-session-id')) {
        initNode = response.headers.get('x-mcp-node');
    }
    const type = response.headers.get('content-type') ?? '';
    if (method === 'GET' && response.ok && type.startsWith('text/event-stream')) getOpen();
    return response;
};

let received = 0;
const client = new Client({ name: 'legacy-listen', version: '1.0.0' }, { capabilities: {} });
for (const schema of [
    ToolListChangedNotificationSchema,
    PromptListChangedNotificationSchema,
    ResourceListChangedNotificationSchema
]) {
    client.setNotificationHandler(schema, note => {
        emit({ event: 'notification', method: note.method });
        received += 1;
        if (received >= expect) {
            client.close().finally(() => process.exit(0));
        }
    });
}
const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: observingFetch });
try {
    await client.connect(transport);
} catch (err) {
    fail(`connect: ${err?.message ?? err}`);
}
await getOpened;
emit({ event: 'ready', session_id: transport.sessionId ?? null, node: initNode });
