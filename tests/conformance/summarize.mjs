// Summarizes one run of the conformance suite from its results directory
// (`<dir>/server-<scenario>-<timestamp>/checks.json`, one per scenario).
//
//   node summarize.mjs <label> <results-dir> [<requirements.yaml>]
//
// Prints the check totals (passed, failed, warnings, skipped) and one line per failure and
// warning. With a requirement set, scenarios outside its `server:` list are counted apart as
// "not scored". Writes nothing else; the exit status is always 0 (the suite's own exit status
// decides pass/fail).
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const [label, dir, requirements] = process.argv.slice(2);
if (!label || !dir) {
  console.error('usage: node summarize.mjs <label> <results-dir> [<requirements.yaml>]');
  process.exit(2);
}

/** The `server:` list of a requirements file (plain YAML list, no parser needed). */
function scoredScenarios(file) {
  const scored = new Set();
  let inServer = false;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (/^\S/.test(line)) inServer = line.startsWith('server:');
    const m = inServer && /^\s+-\s+(\S+)\s*$/.exec(line);
    if (m) scored.add(m[1]);
  }
  return scored;
}

const scored = requirements ? scoredScenarios(requirements) : null;
const empty = () => ({ scenarios: 0, SUCCESS: 0, FAILURE: 0, WARNING: 0, SKIPPED: 0, INFO: 0 });
const totals = { scored: empty(), notScored: empty() };
const problems = [];

const runs = existsSync(dir) ? readdirSync(dir).filter((d) => d.startsWith('server-')) : [];
for (const run of runs.sort()) {
  const file = join(dir, run, 'checks.json');
  if (!existsSync(file)) continue;
  // server-<scenario>-<ISO timestamp with dashes>
  const scenario = run.replace(/^server-/, '').replace(/-\d{4}-\d{2}-\d{2}T[\d-]+Z$/, '');
  const isScored = !scored || scored.has(scenario);
  const bucket = isScored ? totals.scored : totals.notScored;
  bucket.scenarios += 1;
  let checks;
  try {
    checks = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    problems.push({ kind: 'FAIL', scenario, id: '(checks.json)', msg: String(e), isScored });
    bucket.FAILURE += 1;
    continue;
  }
  for (const c of checks) {
    bucket[c.status] = (bucket[c.status] ?? 0) + 1;
    if (c.status === 'FAILURE' || c.status === 'WARNING') {
      const msg = (c.errorMessage ?? c.description ?? '').replace(/\s+/g, ' ').slice(0, 300);
      problems.push({ kind: c.status === 'FAILURE' ? 'FAIL' : 'WARN', scenario, id: c.id, msg, isScored });
    }
  }
}

const line = (t) =>
  `${t.scenarios} scenarios, ${t.SUCCESS} passed, ${t.FAILURE} failed, ` +
  `${t.WARNING} warnings, ${t.SKIPPED} skipped`;
console.log(`--- ${label}`);
if (scored) {
  console.log(`    scored:     ${line(totals.scored)}`);
  console.log(`    not scored: ${line(totals.notScored)}`);
} else {
  console.log(`    ${line(totals.scored)}`);
}
for (const p of problems) {
  const tag = scored && !p.isScored ? ' (not scored)' : '';
  console.log(`    ${p.kind} ${p.scenario} / ${p.id}${tag}: ${p.msg}`);
}
