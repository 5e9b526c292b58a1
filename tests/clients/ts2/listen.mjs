#!/usr/bin/env node
// A `subscriptions/listen` subscription (protocol revision 2026-07-28) with the official
// TypeScript SDK v2 client (`@modelcontextprotocol/client`) over Streamable HTTP.
//
// Usage:
//   node listen.mjs URL [--expect N] [--filter F ...] [--timeout MS]
//
//   URL          the MCP endpoint, e.g. http://127.0.0.1:8080/mcp
//   --expect N   exit 0 once N notifications arrived (without it: run until killed)
//   --filter F   what to listen to, repeatable (default: tools):
//                  tools           notifications/tools/list_changed
//                  prompts         notifications/prompts/list_changed
//                  resources       notifications/resources/list_changed
//                  resources:URI   notifications/resources/updated for URI
//   --timeout MS fail when the run (connect, acknowledgement and the N notifications) takes
//                longer than MS milliseconds (default: no limit)
//
// The client connects pinned to 2026-07-28 (`server/discover`, no fallback to `initialize`),
// then opens the subscription with `Client.listen(filter)`. Every line on stdout is one JSON
// object:
//   {"event":"server","info":{name,version},"protocolVersion":...,"era":...,"capabilities":...,
//    "sdkVersion":...}                 what the client read from server/discover, and its version
//   {"event":"ready","filter":<the filter the server acknowledged>}
//   {"event":"notification","method":...,"params":...}        one per notification
//   {"event":"error","message":...}                            then exit 1
// The `ready` line is printed once the server's `notifications/subscriptions/acknowledged`
// arrived: a change made after it is delivered.

import { readFileSync } from 'node:fs';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const MODERN_VERSION = '2026-07-28';
const LIST_CHANGED = {
    tools: 'toolsListChanged',
    prompts: 'promptsListChanged',
    resources: 'resourcesListChanged'
};

function emit(event) {
    process.stdout.write(`${JSON.stringify(event)}\n`);
}

function fail(message) {
    emit({ event: 'error', message });
    process.exit(1);
}

function usage(problem) {
    console.error(`${problem}\nusage: node listen.mjs URL [--expect N] [--filter tools|prompts|resources|resources:URI ...] [--timeout MS]`);
    fail(problem);
}

function parseArgs(argv) {
    const args = { url: undefined, expect: undefined, filters: [], timeoutMs: undefined };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = () => {
            const v = argv[++i];
            if (v === undefined) usage(`${arg} needs a value`);
            return v;
        };
        const count = name => {
            const v = value();
            const n = Number(v);
            if (!Number.isInteger(n) || n < 0) usage(`${name} ${v}: not a non-negative integer`);
            return n;
        };
        if (arg === '--expect') args.expect = count('--expect');
        else if (arg === '--timeout') args.timeoutMs = count('--timeout');
        else if (arg === '--filter') args.filters.push(value());
        else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
        else if (args.url === undefined) args.url = arg;
        else usage(`unexpected argument ${arg}`);
    }
    if (args.url === undefined) usage('URL is missing');
    if (args.filters.length === 0) args.filters.push('tools');
    return args;
}

// `tools`, `prompts`, `resources`, `resources:URI` → the `notifications` filter of the request.
function buildFilter(filters) {
    const filter = {};
    for (const f of filters) {
        if (Object.hasOwn(LIST_CHANGED, f)) {
            filter[LIST_CHANGED[f]] = true;
        } else if (f.startsWith('resources:') && f.length > 'resources:'.length) {
            (filter.resourceSubscriptions ??= []).push(f.slice('resources:'.length));
        } else {
            usage(`--filter ${f}: expected tools, prompts, resources or resources:URI`);
        }
    }
    return filter;
}

function clientVersion() {
    try {
        const pkg = new URL('./node_modules/@modelcontextprotocol/client/package.json', import.meta.url);
        return JSON.parse(readFileSync(pkg, 'utf8')).version ?? 'unknown';
    } catch {
        return 'unknown';
    }
}

function errorMessage(error) {
    if (error instanceof Error) {
        const code = error.code !== undefined ? ` (code ${error.code})` : '';
        return `${error.name}: ${error.message}${code}`;
    }
    return String(error);
}

const args = parseArgs(process.argv.slice(2));
const filter = buildFilter(args.filters);

if (args.timeoutMs !== undefined) {
    setTimeout(() => fail(`not done within ${args.timeoutMs} ms`), args.timeoutMs).unref();
}
process.on('unhandledRejection', error => fail(`unhandled rejection: ${errorMessage(error)}`));
process.on('uncaughtException', error => fail(`uncaught exception: ${errorMessage(error)}`));

const SDK_VERSION = clientVersion();
const client = new Client(
    { name: 'mcp-affinity-ts2-listen', version: SDK_VERSION },
    { versionNegotiation: { mode: { pin: MODERN_VERSION } } }
);

let subscription;
let received = 0;
let done = false;
async function onNotification(notification) {
    if (done) return;
    emit({ event: 'notification', method: notification.method, params: notification.params ?? null });
    received++;
    if (args.expect !== undefined && received >= args.expect) {
        done = true;
        await subscription?.close().catch(() => {});
        await client.close().catch(() => {});
        process.exit(0);
    }
}
// Every notification the subscription delivers reaches one of these: the list changes and
// resource updates through their own handlers, anything else through the fallback.
for (const method of [
    'notifications/tools/list_changed',
    'notifications/prompts/list_changed',
    'notifications/resources/list_changed',
    'notifications/resources/updated'
]) {
    client.setNotificationHandler(method, onNotification);
}
client.fallbackNotificationHandler = onNotification;

try {
    await client.connect(new StreamableHTTPClientTransport(new URL(args.url)));
} catch (error) {
    fail(`connect: ${errorMessage(error)}`);
}
emit({
    event: 'server',
    info: client.getServerVersion() ?? null,
    protocolVersion: client.getNegotiatedProtocolVersion() ?? null,
    era: client.getProtocolEra() ?? null,
    capabilities: client.getServerCapabilities() ?? null,
    sdkVersion: SDK_VERSION
});

try {
    subscription = await client.listen(filter);
} catch (error) {
    fail(`subscriptions/listen: ${errorMessage(error)}`);
}
emit({ event: 'ready', filter: subscription.honoredFilter });
if (args.expect === 0) {
    done = true;
    await subscription.close().catch(() => {});
    await client.close().catch(() => {});
    process.exit(0);
}

const cause = await subscription.closed;
if (!done) {
    fail(`the subscription closed (${cause}) after ${received} notification(s)`);
}
