#!/usr/bin/env python3
"""Turns the load generator's JSON lines into bench/results/results.md and chart.svg.

    python3 bench/report.py bench/results/raw.jsonl bench/results --commit HASH [...]

Standard library only. Every figure is the median over the runs of one configuration, taken
per metric.
"""

import argparse
import datetime
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def rmcp_label():
    """`rmcp X.Y`, the release `bench/peers` runs: the one the workspace's Cargo.lock holds."""
    lock = Path(__file__).resolve().parent.parent / "Cargo.lock"
    m = re.search(r'name = "rmcp"\nversion = "(\d+)\.(\d+)', lock.read_text()) if lock.is_file() else None
    return f"rmcp {m.group(1)}.{m.group(2)}" if m else "rmcp"


RMCP = rmcp_label()

TARGETS = ["bare", "rmcp", "ours-transport", "ours-full", "ours-forward", "hyper-forward", "haproxy-forward",
           "ours-cluster", "ours-nolog"]
# Reference hops for the forwarded ping: the same requests, passed to node A by a hop that does
# nothing else.
HOPS = ["hyper-forward", "haproxy-forward"]
# The chart's series (the forwarded ping has its own section).
CHART_TARGETS = ["bare", "rmcp", "ours-transport", "ours-full"]
NAMES = {
    "bare": "bare hyper (limit)",
    "rmcp": RMCP,
    "ours-transport": "ours: transport only",
    "ours-full": "ours: all layers + Redis",
    "ours-forward": "ours: forwarded B → A (both nodes' CPU)",
    "hyper-forward": "reference: bare hyper hop → A (both processes' CPU)",
    "haproxy-forward": "reference: HAProxy hop → A (both processes' CPU)",
    "ours-adopt": "ours: adopted after a drain",
    "ours-cluster": "ours: 3 nodes, one Redis (cluster bus)",
    "ours-nolog": "ours: full stack, no shared event log",
    "ours-tasks": "ours: TaskLayer + RedisTaskStore (examples/everything.rs --redis)",
    "rmcp-tasks": f"{RMCP}: in-process TaskManager (peer-rmcp --tasks)",
}
# The tasks workload's servers and phases.
TASK_TARGETS = ["ours-tasks", "rmcp-tasks"]
TASK_PHASES = [("create", "task creation (`tools/call` → `CreateTaskResult`)"), ("get", "`tasks/get` (completed tasks)")]
COLORS = {"bare": "#888888", "rmcp": "#d95f02", "ours-transport": "#7570b3", "ours-full": "#1b9e77"}


def load(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"report.py: skipping a line that is not JSON: {line[:120]}", file=sys.stderr)
    return rows


def key(r):
    return (r.get("label"), r.get("workload"), r.get("era"), r.get("sessions"), bool(r.get("with_get")),
            r.get("connections"))


class Group:
    def __init__(self, rows):
        self.rows = rows

    def med(self, field):
        vals = [r[field] for r in self.rows if isinstance(r.get(field), (int, float))]
        return statistics.median(vals) if vals else None

    def total(self, field):
        return sum(r.get(field) or 0 for r in self.rows if isinstance(r.get(field), (int, float)))

    def fatal(self):
        return [r["fatal"] for r in self.rows if r.get("fatal")]

    def __len__(self):
        return len(self.rows)


def groups(rows):
    out = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return {k: Group(v) for k, v in out.items()}


def find(gs, label, workload, era="2025-11-25", sessions=None, with_get=False, connections=None):
    """The group of runs of one configuration; without `connections`, the one with the most
    connections (the one-connection latency runs are looked up by name)."""
    found = [(k, g) for k, g in gs.items()
             if k[0] == label and k[1] == workload and k[2] == era and k[4] == with_get
             and (sessions is None or k[3] == sessions) and (connections is None or k[5] == connections)]
    if not found:
        return None
    return max(found, key=lambda kg: kg[0][5] or 0)[1]


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def redis_cpu(g):
    v = g.med("redis_cpu_us_per_op")
    return "" if v is None else f" (+{fmt(v)} Redis)"


def server_cpu(g):
    """Server CPU per operation; with two nodes, both together and each apart."""
    both = g.med("servers_cpu_us_per_op")
    if both is None:
        return fmt(g.med("server_cpu_us_per_op"))
    return f"{fmt(both)} (B {fmt(g.med('server_cpu_us_per_op'))} + A {fmt(g.med('peer_cpu_us_per_op'))})"


def per_node(g, field):
    """The median over the runs of each node's entry of a per-node list (`node_cpu_us_per_op`:
    `--url`'s node first)."""
    lists = [r[field] for r in g.rows if isinstance(r.get(field), list)]
    if not lists:
        return []
    out = []
    for i in range(max(len(l) for l in lists)):
        vals = [l[i] for l in lists if i < len(l) and isinstance(l[i], (int, float))]
        out.append(statistics.median(vals) if vals else None)
    return out


def fanout_cpu(g):
    """Server CPU per delivery; over several nodes, all of them together and each one's per
    delivery on it."""
    nodes = per_node(g, "node_cpu_us_per_op")
    if not nodes:
        return server_cpu(g)
    return f"{fmt(g.med('servers_cpu_us_per_op'))} ({' / '.join(fmt(v) for v in nodes)} per node)"


def publish_per_notification(g):
    p, c = g.med("redis_publish_per_notification"), g.med("redis_commands_per_notification")
    if p is None and c is None:
        return "–"
    return f"{fmt(p)} PUBLISH ({fmt(c)} commands in all)"


def count(v):
    return "–" if v is None else f"{v:,.0f}"


def node_stat(g, field):
    """The median of a registry counter of node B (`GET /stats`) over the runs."""
    vals = [r["node_stats"].get(field) for r in g.rows if isinstance(r.get("node_stats"), dict)]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def request_rows(gs, workloads):
    lines = ["| workload | server | ops/s | p50 ms | p90 ms | p99 ms | max ms | server CPU µs/op "
             "| generator CPU (cores) | other load (cores) | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for title, workload, era, sessions in workloads:
        for t in TARGETS:
            g = find(gs, t, workload, era, sessions)
            if g is None:
                continue
            client = g.med("client_cpu_util")
            bound = " (generator-bound)" if client is not None and client >= 0.93 else ""
            fatal = g.fatal()
            lines.append(
                f"| {title} | {NAMES[t]} | {fmt(g.med('ops_per_s'))} | {fmt(g.med('p50_ms'))} "
                f"| {fmt(g.med('p90_ms'))} | {fmt(g.med('p99_ms'))} | {fmt(g.med('max_ms'))} "
                f"| {server_cpu(g)}{redis_cpu(g)} | {fmt(client)}{bound} "
                f"| {fmt(g.med('other_cpu_util'))} | {int(g.total('errors'))}{' + failed: ' + fatal[0][:80] if fatal else ''} |")
    return lines


def memory_rows(gs, args):
    lines = ["| server | KiB per idle session | KiB per session with a GET stream "
             "| RSS after closing all vs start (no GET / GET) | RSS growth on a second open round, KiB/session "
             "(no GET / GET) | server CPU µs per session opened (no GET / GET) |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in TARGETS:
        a = find(gs, t, "idle", with_get=False)
        b = find(gs, t, "idle", with_get=True)
        if a is None and b is None:
            continue
        m = lambda g, f: g.med(f) if g else None
        pct = lambda v: "–" if v is None else f"{v:+.0f} %"
        lines.append(
            f"| {NAMES[t]} | {fmt(m(a, 'kib_per_session'))} | {fmt(m(b, 'kib_per_session'))} "
            f"| {pct(m(a, 'closed_vs_before_pct'))} / {pct(m(b, 'closed_vs_before_pct'))} "
            f"| {fmt(m(a, 'reopen_growth_kib_per_session'))} / {fmt(m(b, 'reopen_growth_kib_per_session'))} "
            f"| {fmt(m(a, 'server_cpu_us_per_open'))} / {fmt(m(b, 'server_cpu_us_per_open'))} |")
    return lines


def fanout_rows(gs):
    lines = ["| server | streams | trigger → last receipt, ms (median of runs' medians) | trigger → first | "
             "trigger → answer | delivery p50 / p99 ms | server CPU µs per delivery | generator CPU µs per "
             "delivery | Redis commands per notification | missing |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in TARGETS:
        g = find(gs, t, "fanout")
        if g is None:
            continue
        lines.append(
            f"| {NAMES[t]} | {fmt(g.med('streams'))} | {fmt(g.med('fanout_last_ms_median'))} "
            f"| {fmt(g.med('fanout_first_ms_median'))} | {fmt(g.med('trigger_response_ms_median'))} "
            f"| {fmt(g.med('p50_ms'))} / {fmt(g.med('p99_ms'))} | {fanout_cpu(g)} "
            f"| {fmt(g.med('client_cpu_us_per_op'))} | {publish_per_notification(g)} "
            f"| {int(g.total('missing'))} |")
    lines.append(f"| {RMCP} | – | no broadcast primitive (one `notify` per session would be N requests) "
                 "| | | | | | | |")
    one, many = find(gs, "ours-full", "fanout"), find(gs, "ours-cluster", "fanout")
    if many is not None:
        single = one.med("server_cpu_us_per_op") if one else None
        times = lambda v: "–" if ratio(v, single) is None else f"{ratio(v, single):.2f}×"
        nodes = per_node(many, "node_cpu_us_per_op")
        streams = " / ".join(fmt(v, 0) for v in per_node(many, "node_streams"))
        both = many.med("servers_cpu_us_per_op")
        last1 = one.med("fanout_last_ms_median") if one else None
        lines += ["", f"Over {fmt(many.med('nodes'), 0)} nodes ({streams} streams; all on the server core, "
                  "one Redis): one `broadcast` is published once on the cluster bus and each node delivers "
                  "it to its own streams. Each node's CPU per delivery on that node against the single "
                  f"node's ({fmt(single)} µs): {' / '.join(f'{fmt(v)} µs = {times(v)}' for v in nodes)}; "
                  f"all nodes together {fmt(both)} µs per delivery ({times(both)}). Trigger → last delivery "
                  f"on any node: {fmt(many.med('fanout_last_ms_median'))} ms ({fmt(last1)} ms on one node). "
                  f"Redis commands per notification over the broadcasts: {publish_per_notification(many)}; "
                  "in all counts every command in the window, the nodes' liveness records included."]
    return lines


def task_group(gs, t):
    return find(gs, t, "tasks", era="2026-07-28")


def task_redis(g, phase):
    """Redis commands per operation of one phase, and the commands behind them (medians per
    command over the runs; those under 0.005 per operation, the nodes' background, left out)."""
    total = g.med(f"{phase}_redis_commands_per_op")
    if total is None:
        return "–", None
    per = defaultdict(list)
    for r in g.rows:
        for c, v in (r.get(f"{phase}_redis_commandstats_per_op") or {}).items():
            per[c].append(v)
    detail = ", ".join(f"`{c}` {statistics.median(v):.2f}" for c, v in sorted(per.items())
                       if statistics.median(v) >= 0.005)
    return fmt(total), detail


def tasks_rows(gs):
    lines = ["| server | phase | ops/s | p50 ms | p90 ms | p99 ms | server CPU µs/op | Redis commands per op "
             "| generator CPU (cores) | other load (cores) | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    found = False
    for t in TASK_TARGETS:
        g = task_group(gs, t)
        if g is None:
            continue
        found = True
        fatal = g.fatal()
        for phase, title in TASK_PHASES:
            m = lambda f: g.med(f"{phase}_{f}")
            client = m("client_cpu_util")
            bound = " (generator-bound)" if client is not None and client >= 0.93 else ""
            rc = m("redis_cpu_us_per_op")
            total, detail = task_redis(g, phase)
            redis = total if detail is None else f"{total} ({detail})"
            lines.append(
                f"| {NAMES[t]} | {title} | {fmt(m('ops_per_s'))} | {fmt(m('p50_ms'))} | {fmt(m('p90_ms'))} "
                f"| {fmt(m('p99_ms'))} | {fmt(m('server_cpu_us_per_op'))}{'' if rc is None else f' (+{fmt(rc)} Redis)'} "
                f"| {redis if t == 'ours-tasks' else 'none (in-process)'} | {fmt(client)}{bound} "
                f"| {fmt(m('other_cpu_util'))} | {int(g.total(phase + '_errors'))}"
                f"{' + failed: ' + fatal[0][:80] if fatal else ''} |")
    if not found:
        return ["- (no ours-tasks or rmcp-tasks runs)"]
    notes = []
    for t in TASK_TARGETS:
        g = task_group(gs, t)
        if g is not None:
            sample = next((r[k] for r in g.rows for k in ("create_error_sample", "get_error_sample")
                           if r.get(k)), None)
            notes.append(f"{NAMES[t]}: {count(g.med('tasks_created'))} tasks created per run (all polled in the "
                         f"`tasks/get` phase), {int(g.total('get_not_completed'))} polls found a task not yet "
                         f"completed{'; first error: `' + sample[:160] + '`' if sample else ''}.")
    return lines + ["", *notes]


def tasks_targets(add, gs):
    """The issue's tasks line: no target figure, the figures beside rmcp's."""
    ours, rmcp = task_group(gs, "ours-tasks"), task_group(gs, "rmcp-tasks")
    if ours is None and rmcp is None:
        return

    def figures(g, phase, redis):
        if g is None:
            return "–"
        m = lambda f: g.med(f"{phase}_{f}")
        rc = m("redis_cpu_us_per_op")
        text = (f"{fmt(m('ops_per_s'))} /s, {fmt(m('server_cpu_us_per_op'))} µs server CPU"
                f"{'' if rc is None or not redis else f' (+{fmt(rc)} Redis)'} per op, p50 {fmt(m('p50_ms'))} / "
                f"p99 {fmt(m('p99_ms'))} ms")
        errs = int(g.total(f"{phase}_errors"))
        return text + (f", {errs} errors" if errs else "")

    for phase, title in TASK_PHASES:
        r = ratio((ours or Group([])).med(f"{phase}_server_cpu_us_per_op"),
                  (rmcp or Group([])).med(f"{phase}_server_cpu_us_per_op"))
        beside = "" if r is None else f" = {r:.2f}× rmcp's server CPU"
        add(f"{title}, {fmt((ours or rmcp).med('connections'), 0)} connections: throughput and server CPU per op "
            "(for information; no target figure)",
            f"ours (Redis store): {figures(ours, phase, True)}; {RMCP} (in process): "
            f"{figures(rmcp, phase, False)}{beside}", None)
    if ours is not None:
        for phase, what in (("create", "per task created (stored, run, completed)"), ("get", "per `tasks/get`")):
            total, detail = task_redis(ours, phase)
            add(f"Redis commands {what} (`INFO commandstats`, the scripts' own included)",
                total if not detail else f"{total}: {detail}", None)


def liveness_split(rows):
    """(commands, of which the nodes' liveness heartbeat) over the measured windows of `rows`
    (None without counts). Each node rewrites its liveness record every 5 s (one `SADD` to the
    node set and one `SET` of the record), whatever the requests do, so a window may hold a
    pair; only the commands besides those come from the requests."""
    stats = [r["redis_commandstats"] for r in rows if isinstance(r.get("redis_commandstats"), dict)]
    if not stats:
        return None
    total = sum(sum(c.values()) for c in stats)
    heartbeat = sum(2 * min(c.get("sadd", 0), c.get("set", 0)) for c in stats)
    return total, heartbeat


def ping_redis(g):
    """`ping`'s Redis commands in the measured windows, the liveness heartbeat told apart."""
    split = liveness_split(g.rows)
    if split is None:
        return None, None
    total, heartbeat = split
    text = f"{total} Redis commands"
    if heartbeat:
        text += f" ({heartbeat} of them the node's liveness record, every 5 s; {total - heartbeat} from requests)"
    return text, total - heartbeat


def redis_lines(gs):
    out = []
    for n in sorted({k[3] for k in gs if k[0] == "ours-full" and k[1] == "ping" and k[3]}):
        g = find(gs, "ours-full", "ping", sessions=n)
        text, _ = ping_redis(g)
        runs = sum(isinstance(r.get("redis_commandstats"), dict) for r in g.rows)
        if text:
            out.append(f"- `ping` on {n:,} live sessions: **{text}** in "
                       f"{g.total('ops'):,.0f} measured requests ({runs} runs).")
    g = find(gs, "ours-full", "idle", with_get=False)
    if g is not None and g.med("redis_commands_per_session") is not None:
        per = defaultdict(list)
        for r in g.rows:
            for c, v in (r.get("redis_commandstats_per_session") or {}).items():
                per[c].append(v)
        detail = ", ".join(f"`{c}` {statistics.median(v):.2f}" for c, v in sorted(per.items()))
        out.append(f"- one session's life (initialize … DELETE), counted on the idle workload once the "
                   f"registry is done: **{fmt(g.med('redis_commands_per_session'))} Redis commands per session** "
                   f"— {detail}.")
    g = find(gs, "ours-full", "churn")
    if g is not None and g.med("redis_drain_s") is not None:
        out.append(f"- session churn: after the load stops, the registry needs **{fmt(g.med('redis_drain_s'))} s** "
                   "more to finish its queued Redis writes (time until Redis is quiet, less 0.3 s); then "
                   f"**{fmt(g.med('redis_keys_left'), 0)} keys** are left in Redis although every session was "
                   f"DELETEd, and the node logged **{fmt(g.med('registry_drops'), 0)}** \"registry queue full: "
                   f"operation dropped\" warnings per run ({fmt(g.med('ops'))} sessions in the measured "
                   "window, more in the warm-up second; each session is one register and one remove).")
    drops = [(k, g) for k, g in gs.items() if k[0] == "ours-full" and (g.med("registry_drops") or 0) > 0
             and k[1] != "churn"]
    for k, g in drops:
        out.append(f"- registry writes dropped (queue full) in `{k[1]}`"
                   f"{' with GET' if k[4] else ''}: {fmt(g.med('registry_drops'), 0)} per run.")
    return out


def continuity_lines(gs):
    """Forwarding and adoption: two nodes sharing one Redis."""
    out = []
    sessions = sorted({k[3] for k in gs if k[0] == "ours-forward" and k[1] == "ping" and k[3]
                       and k[5] != 1})
    if sessions:
        out += ["`ping` on sessions initialized at node A, sent to node B, which forwards each to A "
                "(closed loop, as above), beside the local `ping` of the same run. CPU: both nodes' "
                "together (B + A).", "",
                "| sessions | server | ops/s | p50 ms | p99 ms | server CPU µs/op | vs local | "
                "forwarded by B | adopted by B | Redis commands in the measured window | errors |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in sessions:
            loc = find(gs, "ours-full", "ping", sessions=n)
            for t in ["ours-full", "ours-forward", *HOPS]:
                g = find(gs, t, "ping", sessions=n)
                if g is None:
                    continue
                r = ratio(g.med("servers_cpu_us_per_op"), loc.med("server_cpu_us_per_op")) \
                    if t != "ours-full" and loc else None
                # A hop's `GET /stats` reaches node A: no B counters to show.
                stat = (lambda f: "–") if t in HOPS else (lambda f: count(node_stat(g, f)))
                out.append(f"| {n:,} | {NAMES[t]} | {fmt(g.med('ops_per_s'))} | {fmt(g.med('p50_ms'))} "
                           f"| {fmt(g.med('p99_ms'))} | {server_cpu(g)} | "
                           f"{'–' if r is None else f'{r:.2f}×'} | {stat('forwarded')} "
                           f"| {stat('adopted')} | {count(g.med('redis_commands'))} "
                           f"| {int(g.total('errors'))} |")
        if any(find(gs, t, "ping") for t in HOPS):
            out += ["", "The reference hops pass each request to A and do nothing else: a bare hyper "
                    "HTTP/1.1 forwarder (`peer-hyper --forward`, one upstream connection per accepted "
                    "connection, no routing, no header rewritten) and HAProxy (1 thread, `mode http`, "
                    "keep-alive both ways). In their rows B is the hop."]
        out.append("")
    loc1 = find(gs, "ours-full", "ping", connections=1)
    fwd1 = find(gs, "ours-forward", "ping", connections=1)
    if loc1 or fwd1:
        out += ["One request in flight (64 sessions, one connection): the latency a hop adds when "
                "nothing queues.", "",
                "| server | ops/s | p50 ms | p90 ms | p99 ms | server CPU µs/op | errors |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for t, g in (("ours-full", loc1), ("ours-forward", fwd1)):
            if g is not None:
                out.append(f"| {NAMES[t]} | {fmt(g.med('ops_per_s'))} | {fmt(g.med('p50_ms'), 3)} "
                           f"| {fmt(g.med('p90_ms'), 3)} | {fmt(g.med('p99_ms'), 3)} | {server_cpu(g)} "
                           f"| {int(g.total('errors'))} |")
        out.append("")
    g = find(gs, "ours-adopt", "adopt")
    if g is not None:
        statuses = defaultdict(int)
        for r in g.rows:
            for k, v in (r.get("statuses") or {}).items():
                statuses[k] += v
        sample = next((r["error_sample"] for r in g.rows if r.get("error_sample")), None)
        out += [f"Adoption: {count(g.med('sessions'))} sessions initialized at node A; A is sent "
                "SIGTERM and, once its `/healthz` answers 503 (it drains), every session's first "
                f"request (`ping`) goes to node B over {count(g.med('connections'))} connections at "
                "once; B finds the owner draining and adopts the session. Then a second `ping` on each.",
                "",
                "| SIGTERM → 503, ms | first request p50 / p90 / p99 / max ms | failed (statuses, all runs) "
                "| second request p50 / p99 ms | B CPU µs per adoption (10 ms ticks over the burst: coarse) "
                "| Redis commands per adoption (`INFO commandstats`, the scripts' own included) "
                "| adopted by B | forwarded by B |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {fmt(g.med('drain_signal_to_503_ms'))} | {fmt(g.med('p50_ms'))} / {fmt(g.med('p90_ms'))} "
                f"/ {fmt(g.med('p99_ms'))} / {fmt(g.med('max_ms'))} | {int(g.total('failed'))} "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}) "
                f"| {fmt(g.med('second_p50_ms'))} / {fmt(g.med('second_p99_ms'))} "
                f"| {fmt(g.med('server_cpu_us_per_op'))} | {fmt(g.med('redis_commands_per_session'))} "
                f"| {count(node_stat(g, 'adopted'))} | {count(node_stat(g, 'forwarded'))} |"]
        if sample:
            out += ["", f"First failure (one run): `{sample[:200]}`"]
        out.append("")
    return out


def rounds(gs, a, b, n):
    """The same ratio round by round (`a` and `b` run back to back in each round), as a range:
    how far this machine's noise moves it."""
    per_run = lambda label: {r.get("run"): r.get("server_cpu_us_per_op")
                             for r in (find(gs, label, "ping", sessions=n) or Group([])).rows}
    ra, rb = per_run(a), per_run(b)
    rs = sorted(ratio(ra[i], rb[i]) for i in ra if i in rb and ratio(ra[i], rb[i]) is not None)
    return "" if len(rs) < 2 else f" (rounds {rs[0]:.2f}–{rs[-1]:.2f}×)"


def targets_table(gs):
    """The issue's targets, read off this run."""
    rows = ["| target | measured | met |", "|---|---|:---:|"]

    def add(name, text, ok):
        rows.append(f"| {name} | {text} | {'–' if ok is None else ('yes' if ok else 'no')} |")

    sessions = sorted({k[3] for k in gs if k[1] == "ping" and k[3]})
    cpu = lambda t, n: (find(gs, t, "ping", sessions=n) or Group([])).med("server_cpu_us_per_op")
    ops = lambda t, n: (find(gs, t, "ping", sessions=n) or Group([])).med("ops_per_s")
    p99 = lambda t, n: (find(gs, t, "ping", sessions=n) or Group([])).med("p99_ms")
    for n in sessions:
        r_rmcp = ratio(cpu("ours-full", n), cpu("rmcp", n))
        r_bare = ratio(cpu("ours-full", n), cpu("bare", n))
        add(f"ping, {n:,} sessions: server CPU/request ≤ 1/3 of rmcp's",
            "–" if r_rmcp is None else f"{fmt(cpu('ours-full', n))} vs {fmt(cpu('rmcp', n))} µs = {r_rmcp:.2f}×",
            None if r_rmcp is None else r_rmcp <= 1 / 3)
        add(f"ping, {n:,} sessions: within 1.5× of bare hyper",
            "–" if r_bare is None else f"{fmt(cpu('ours-full', n))} vs {fmt(cpu('bare', n))} µs = {r_bare:.2f}×"
            + rounds(gs, "ours-full", "bare", n),
            None if r_bare is None else r_bare <= 1.5)
        r = ratio(ops("ours-full", n), ops("rmcp", n))
        add(f"ping, {n:,} sessions: throughput ≥ rmcp's",
            "–" if r is None else f"{fmt(ops('ours-full', n))} vs {fmt(ops('rmcp', n))} /s = {r:.2f}×",
            None if r is None else r >= 1)
    churn = lambda t: (find(gs, t, "churn") or Group([])).med("ops_per_s")
    r = ratio(churn("ours-full"), churn("rmcp"))
    g = find(gs, "ours-full", "churn") or Group([])
    drops, left = g.med("registry_drops"), g.med("redis_keys_left")
    # "Registry write included": the rate only counts if the registry kept every write.
    complete = not drops and not left
    note = "" if complete else (f"; but the registry dropped {fmt(drops, 0)} writes per run and left "
                                f"{fmt(left, 0)} records in Redis")
    add("churn ≥ 2× rmcp's rate (registry write included)",
        "–" if r is None else f"{fmt(churn('ours-full'))} vs {fmt(churn('rmcp'))} /s = {r:.2f}×{note}",
        None if r is None else (r >= 2 and complete))
    idle = lambda t, get: (find(gs, t, "idle", with_get=get) or Group([])).med("kib_per_session")
    v = idle("ours-full", False)
    add("≤ 4 KiB per idle session", "–" if v is None else f"{fmt(v)} KiB", None if v is None else v <= 4)
    r = ratio(idle("ours-full", True), idle("rmcp", True))
    add("≤ 1/3 of rmcp's memory with a GET stream",
        "–" if r is None else f"{fmt(idle('ours-full', True))} vs {fmt(idle('rmcp', True))} KiB = {r:.2f}×",
        None if r is None else r <= 1 / 3)
    closed = [(find(gs, "ours-full", "idle", with_get=g) or Group([])).med("closed_vs_before_pct")
              for g in (False, True)]
    closed = [c for c in closed if c is not None]
    add("memory within 5 % of the start after all sessions close",
        "–" if not closed else " / ".join(f"{c:+.0f} %" for c in closed),
        None if not closed else all(abs(c) <= 5 for c in closed))
    g = find(gs, "ours-full", "ping", sessions=sessions[-1]) if sessions else None
    text, from_requests = ping_redis(g) if g is not None else (None, None)
    add("zero Redis commands per request (ping)", text or "–",
        None if from_requests is None else from_requests == 0)
    f = (find(gs, "ours-full", "fanout") or Group([])).med("fanout_last_ms_median")
    n = (find(gs, "ours-full", "fanout") or Group([])).med("streams")
    fb = (find(gs, "bare", "fanout") or Group([])).med("fanout_last_ms_median")
    limit = "" if fb is None else f" (bare hyper limit: {fmt(fb)} ms)"
    add(f"fan-out to {fmt(n)} streams ≤ 50 ms", "–" if f is None else f"{fmt(f)} ms{limit}",
        None if f is None else f <= 50)
    one, many = find(gs, "ours-full", "fanout"), find(gs, "ours-cluster", "fanout")
    if many is not None:
        single = one.med("server_cpu_us_per_op") if one else None
        nodes = per_node(many, "node_cpu_us_per_op")
        worst = max((v for v in nodes if v is not None), default=None)
        r = ratio(worst, single)
        missed = int(many.total("missing"))
        note = f"; {missed} deliveries missing" if missed else ""
        add(f"one notification to {fmt(many.med('streams'))} GET streams over {fmt(many.med('nodes'), 0)} "
            "nodes: per-node server CPU per delivery ≤ 1.5× a single node's",
            "–" if r is None else f"{' / '.join(fmt(v) for v in nodes)} vs {fmt(single)} µs = {r:.2f}× "
            f"(the highest){note}",
            None if r is None else (r <= 1.5 and not missed))
        add(f"the same: time from the broadcast (trigger sent) to the last delivery (for information; "
            f"{fmt(one.med('fanout_last_ms_median') if one else None)} ms on one node)",
            f"{fmt(many.med('fanout_last_ms_median'))} ms", None)
        p = many.med("redis_publish_per_notification")
        add("the same: Redis commands per notification (one PUBLISH reaches every node)",
            publish_per_notification(many),
            None if p is None else p <= 1)
    nolog = find(gs, "ours-nolog", "fanout")
    if one is not None and nolog is not None:
        a, b = one.med("server_cpu_us_per_op"), nolog.med("server_cpu_us_per_op")
        r = ratio(a, b)
        add("a notification with the shared event log: server CPU per delivery ≤ 1.5× without it",
            "–" if r is None else f"{fmt(a)} vs {fmt(b)} µs = {r:.2f}×", None if r is None else r <= 1.5)
        c, c0 = one.med("redis_commands_per_delivery"), nolog.med("redis_commands_per_delivery")
        add("the same: Redis commands per delivered notification ≤ 1/8 (batched)",
            f"{fmt(c)} (without the log: {fmt(c0)})", None if c is None else c <= 0.125)
    if sessions:
        n = sessions[-1]
        a, b = p99("ours-full", n), p99("rmcp", n)
        add(f"p99 at the highest load ({n:,} sessions) ≤ rmcp's",
            "–" if a is None or b is None else f"{fmt(a)} vs {fmt(b)} ms", None if a is None or b is None else a <= b)
    # Forwarding and adoption (two nodes).
    for n in sorted({k[3] for k in gs if k[0] == "ours-forward" and k[1] == "ping" and k[3] and k[5] != 1}):
        fwd = find(gs, "ours-forward", "ping", sessions=n) or Group([])
        loc = find(gs, "ours-full", "ping", sessions=n) or Group([])
        both, one = fwd.med("servers_cpu_us_per_op"), loc.med("server_cpu_us_per_op")
        r = ratio(both, one)
        errs = int(fwd.total("errors"))
        note = f"; {errs} errors" if errs else ""
        add(f"ping forwarded through a non-owner node, {n:,} sessions: both nodes' CPU ≤ 2.5× a local ping",
            "–" if r is None else f"{fmt(both)} (B {fmt(fwd.med('server_cpu_us_per_op'))} + A "
            f"{fmt(fwd.med('peer_cpu_us_per_op'))}) vs {fmt(one)} µs = {r:.2f}×{note}",
            None if r is None else (r <= 2.5 and not errs))
        for hop in HOPS:
            g = find(gs, hop, "ping", sessions=n)
            if g is None:
                continue
            cpu = g.med("servers_cpu_us_per_op")
            rh = ratio(cpu, one)
            add(f"for reference, {n:,} sessions: the same requests through {NAMES[hop].split(': ', 1)[1].split(' (')[0]} "
                "(hop + A) against a local ping",
                "–" if rh is None else f"{fmt(cpu)} (hop {fmt(g.med('server_cpu_us_per_op'))} + A "
                f"{fmt(g.med('peer_cpu_us_per_op'))}) vs {fmt(one)} µs = {rh:.2f}×", None)
        a, b = fwd.med("p50_ms"), loc.med("p50_ms")
        if a is not None and b is not None:
            add(f"ping forwarded, {n:,} sessions over {fmt(fwd.med('connections'), 0)} connections: "
                "added p50 (for information: queueing on the shared core)",
                f"{fmt(a, 3)} vs {fmt(b, 3)} ms = +{a - b:.3f} ms", None)
    fwd1 = find(gs, "ours-forward", "ping", connections=1) or Group([])
    loc1 = find(gs, "ours-full", "ping", connections=1) or Group([])
    a, b = fwd1.med("p50_ms"), loc1.med("p50_ms")
    if a is not None or b is not None:
        add("ping forwarded: added p50 latency ≤ 0.5 ms (one request in flight)",
            "–" if a is None or b is None else f"{fmt(a, 3)} vs {fmt(b, 3)} ms = +{a - b:.3f} ms",
            None if a is None or b is None else a - b <= 0.5)
    g = find(gs, "ours-adopt", "adopt")
    if g is not None:
        p, failed = g.med("p99_ms"), int(g.total("failed"))
        note = f"; {failed} of {int(g.total('ops'))} failed" if failed else ", none failed"
        add(f"first request on a session whose owner drained: p99 ≤ 10 ms "
            f"({fmt(g.med('sessions'), 0)} sessions, {fmt(g.med('connections'), 0)} at once)",
            ("–" if p is None else f"{fmt(p)} ms") + note,
            None if p is None else (p <= 10 and not failed))
    tasks_targets(add, gs)
    return rows


# --- SVG -------------------------------------------------------------------------------------------

def chart(gs, commit, path):
    sessions = sorted({k[3] for k in gs if k[1] == "ping" and k[2] == "2025-11-25" and k[3]})
    if not sessions:
        return
    W, H = 960, 420
    panels = [("ping throughput (requests/s)", "ops_per_s"),
              ("server CPU per ping (µs)", "server_cpu_us_per_op")]
    pw, ph = 380, 260
    left0, top = 80, 70
    gap = 100
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
           f'ping on N live sessions over 64 connections: ours vs {RMCP}</text>',
           f'<text x="{W / 2}" y="44" text-anchor="middle" fill="#555">commit {esc(commit[:12])} · '
           f'medians of runs · server pinned to one core, generator to the other</text>']
    lx = [math.log10(s) for s in sessions]
    xmin, xmax = min(lx), max(lx)
    if xmax == xmin:
        xmin, xmax = xmin - 0.5, xmax + 0.5
    for pi, (title, field) in enumerate(panels):
        x0 = left0 + pi * (pw + gap)
        series = {}
        for t in CHART_TARGETS:
            pts = []
            for s in sessions:
                g = find(gs, t, "ping", sessions=s)
                v = g.med(field) if g else None
                if v is not None:
                    pts.append((s, v))
            if pts:
                series[t] = pts
        ymax = max((v for pts in series.values() for _, v in pts), default=1) * 1.15
        ymax = nice(ymax)
        sx = lambda s: x0 + (math.log10(s) - xmin) / (xmax - xmin) * pw
        sy = lambda v: top + ph - v / ymax * ph
        out.append(f'<text x="{x0 + pw / 2}" y="{top - 10}" text-anchor="middle" font-weight="bold">'
                   f'{esc(title)}</text>')
        out.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>')
        for i in range(6):
            v = ymax * i / 5
            y = sy(v)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{tick(v)}</text>')
        for s in sessions:
            x = sx(s)
            out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 5}" stroke="#444"/>')
            out.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle" fill="#444">{s:,}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 36}" text-anchor="middle">live sessions (log scale)</text>')
        for t, pts in series.items():
            dash = ' stroke-dasharray="6,4"' if t == "bare" else ""
            d = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{COLORS[t]}" stroke-width="2.5"{dash}/>')
            for s, v in pts:
                out.append(f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="3.5" fill="{COLORS[t]}"/>')
    # legend
    lx0 = left0
    ly = H - 28
    for t in CHART_TARGETS:
        if not any(find(gs, t, "ping", sessions=s) for s in sessions):
            continue
        dash = ' stroke-dasharray="6,4"' if t == "bare" else ""
        out.append(f'<line x1="{lx0}" y1="{ly}" x2="{lx0 + 26}" y2="{ly}" stroke="{COLORS[t]}" stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{lx0 + 32}" y="{ly + 4}">{esc(NAMES[t])}</text>')
        lx0 += 210
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def nice(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def tick(v):
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def steal_line(rows):
    """How much CPU the hypervisor took from this virtual machine during the timed runs
    (`steal` in `/proc/stat`, in cores): on a shared host it is the first suspect when the same
    server measures differently from round to round."""
    st = sorted(r["steal_util"] for r in rows if isinstance(r.get("steal_util"), (int, float)))
    if not st:
        return ""
    return (f"Hypervisor steal during the timed runs (cores, of {len(st)} runs): median "
            f"{statistics.median(st):.2f}, max {st[-1]:.2f}.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--cpu", default="")
    ap.add_argument("--cores", default="")
    ap.add_argument("--rustc", default="")
    ap.add_argument("--redis", default="")
    ap.add_argument("--settings", default="")
    ap.add_argument("--full-stack", default="")
    ap.add_argument("--registry-drops", default="0")
    ap.add_argument("--elapsed", default="")
    args = ap.parse_args()
    rows = load(args.raw)
    gs = groups(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = max((len(g) for g in gs.values()), default=0)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ping = [(f"ping, {s:,} sessions", "ping", "2025-11-25", s)
            for s in sorted({k[3] for k in gs if k[1] == "ping" and k[3]})]
    md = [
        "# Benchmark results",
        "",
        f"Measured on commit `{args.commit}`, {now}, by `scripts/bench.sh` "
        f"({args.elapsed} s). Machine: {args.cpu}, {args.cores} cores; {args.rustc}; redis-server {args.redis}.",
        f"Settings: {args.settings}. Each figure is the median of {runs} runs (per metric), each run "
        "against a freshly started server. Raw JSON lines: `raw.jsonl`.",
        steal_line(rows),
        "",
        "Servers (all HTTP/1.1, `TCP_NODELAY`, one tokio runtime pinned to one core):",
        "- **bare hyper (limit)**: `bench/peers` `peer-hyper` — reads the body, answers a fixed "
        "`{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}`, no session, no parsing. For the fan-out it runs "
        "with `--fanout`: a GET opens an SSE stream fed by a channel, and the `broadcast` call sends one "
        "pre-encoded event to every open stream (no ids, no log, no replay): the least a hyper server "
        "must do per delivery.",
        f"- **{RMCP}**: `bench/peers` `peer-rmcp` — `StreamableHttpService` + `LocalSessionManager` under axum, "
        "default configuration (it answers every legacy-session POST with an SSE stream).",
        "- **ours: transport only**: `examples/node.rs --transport-only` (`SseTransportLayer`).",
        f"- **ours: all layers + Redis**: `examples/node.rs --redis …` — {args.full_stack}; "
        "a real `redis-server` on a free port.",
        "- **reference hops** (`ping` only, beside the forwarded one): node A holds the sessions and "
        "`peer-hyper --forward` (a bare hyper HTTP/1.1 forwarder, one upstream connection per "
        "accepted connection) or HAProxy (1 thread, `mode http`) passes every request to it.",
        "The node example runs with `RUST_LOG=warn` (its default filter logs the crate at debug).",
        "",
        "Generator CPU is the load generator's own CPU in cores; ≥ 0.93 means the generator, not the "
        "server, limited throughput — compare server CPU per operation there.",
        "",
        "## Requests on live sessions (closed loop, one request in flight per connection)",
        "",
        *request_rows(gs, ping + [
            ("tools/call echo, 64 sessions", "call", "2025-11-25", 64),
            ("tools/call echo, stateless 2026-07-28", "call", "2026-07-28", 0),
        ]),
        "",
        "![ping throughput and server CPU per request vs live sessions](chart.svg)",
        "",
        "## Session churn (initialize + notifications/initialized + DELETE; one op = one session)",
        "",
        *request_rows(gs, [("churn, 64 loops", "churn", "2025-11-25", None)]),
        "",
        "## Per-request SSE stream (tools/call progress: 10 steps, 10 ms apart, each a progress and a log "
        "notification; one op = one call with all its progress notifications checked)",
        "",
        *request_rows(gs, [("stream, 128 sessions", "stream", "2025-11-25", 128),
                           ("stream, stateless 2026-07-28", "stream", "2026-07-28", 0)]),
        "",
        "## Memory (server VmRSS)",
        "",
        f"{fmt((find(gs, 'rmcp', 'idle') or find(gs, 'ours-transport', 'idle') or Group([])).med('sessions'))} "
        "sessions opened on a fresh server; with a GET stream each stream holds its own HTTP/1.1 connection. "
        "Then all are closed (DELETE), RSS read again once it has stopped falling (at least 0.5 s, then "
        "until it falls by less than 1 % in 1.5 s), and the same number opened and closed once more: "
        "growth on that second round near zero means the memory still held after closing is kept by the "
        "allocator for reuse, not leaked.",
        "",
        *memory_rows(gs, args),
        "",
        "## Fan-out (one `notifications/message` to every open GET stream)",
        "",
        "Triggered by the node example's `broadcast` tool (`ClusterBus::notify_all`), or the bare "
        "server's equivalent; 5 triggers per run. "
        "The time includes the generator reading every stream on its single core: its CPU per delivery "
        "is shown beside the server's.",
        "",
        *fanout_rows(gs),
        "",
        "## Sessions that outlive their node (ours: two nodes, one Redis)",
        "",
        *(continuity_lines(gs) or ["- (no ours-forward or ours-adopt runs)"]),
        "## Redis commands (ours: all layers)",
        "",
        *(redis_lines(gs) or ["- (no ours-full runs)"]),
        f"- registry writes dropped because the write queue was full, whole bench (node log): "
        f"**{args.registry_drops}**.",
        "- per-run `INFO commandstats` around each ping run, and each tasks run's per-phase counts: "
        "`redis-commandstats.txt`.",
        "",
        "## Tasks (SEP-2663, stateless 2026-07-28; closed loop, one request in flight per connection)",
        "",
        "`loadgen --workload tasks`. Phase 1: `tools/call slow_compute {\"seconds\": 0}` with the per-request "
        "opt-in, answered by a `CreateTaskResult` (ours: once the Redis task store holds the task); the task's "
        "work ends within about a millisecond, so the phase's CPU and Redis commands cover a task's whole life "
        "(created, stored, run, completed, final record written). Phase 2, once Redis is quiet: `tasks/get` "
        "round-robin over every id phase 1 created (all completed; `pollIntervalMs` not honoured, so the "
        "figure is the cost of one poll at saturation). Each phase has its own warm-up and measured window. "
        f"{RMCP} keeps its tasks in process (no store; one `TaskManager` shared by the per-request handlers) "
        "and sweeps its whole task map on every task call, so its figures depend on how many tasks it holds "
        "(the tasks created per run, below).",
        "",
        *tasks_rows(gs),
        "",
        "## Against the issue's targets (this run)",
        "",
        *targets_table(gs),
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
    chart(gs, args.commit, out / "chart.svg")


if __name__ == "__main__":
    main()
