// LLM usage of a workspace: tokens by day (a bar chart), tables by sandbox and by model, and the
// calls the proxy refused (per sandbox and reason), shown apart since they used no tokens.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { get, path } from '../api.js';
import { html, Empty, ErrorBox, Loading, number } from '../ui.js';

const pick = (row, ...names) => {
  for (const name of names) if (row[name] !== undefined && row[name] !== null) return row[name];
  return undefined;
};

/** One usage row in a single shape, whatever casing the server used. */
export function usageRow(row) {
  const input = Number(pick(row, 'inputTokens', 'input_tokens') || 0);
  const output = Number(pick(row, 'outputTokens', 'output_tokens') || 0);
  const cacheWrite = Number(pick(row, 'cacheCreationInputTokens', 'cacheWriteTokens', 'cache_creation_input_tokens') || 0);
  const cacheRead = Number(pick(row, 'cacheReadInputTokens', 'cacheReadTokens', 'cache_read_input_tokens') || 0);
  return {
    day: pick(row, 'day', 'date'),
    sandboxId: pick(row, 'sandboxId', 'sandbox_id'),
    sandboxName: pick(row, 'sandboxName', 'sandbox_name', 'sandboxId', 'sandbox_id') || '(deleted sandbox)',
    model: pick(row, 'model') || '(unknown)',
    requests: Number(pick(row, 'requests') || 0),
    errors: Number(pick(row, 'errors') || 0),
    input, output, cacheWrite, cacheRead,
    total: input + output + cacheWrite + cacheRead,
  };
}

// What each refusal code of the LLM proxy means, in a few words.
const REASONS = {
  quota_reached: 'quota reached',
  rate_limited: 'rate limit reached',
  model_not_allowed: 'model not allowed',
  no_credentials: 'no Anthropic credentials on the server',
  sandbox_inactive: 'sandbox not running',
  token_revoked: 'token revoked',
  unknown_token: 'unknown token',
  route_not_forwarded: 'endpoint not forwarded',
  too_large: 'request too large',
  bad_request: 'malformed request',
};

/** One refusal row: a sandbox, a reason, how many times and when last. */
export function refusedRow(row) {
  const code = String(pick(row, 'reason') || 'refused');
  return {
    sandboxId: pick(row, 'sandboxId', 'sandbox_id'),
    sandboxName: pick(row, 'sandboxName', 'sandbox_name', 'sandboxId') || '(deleted sandbox)',
    reason: REASONS[code] || code.replaceAll('_', ' '),
    count: Number(pick(row, 'count') || 0),
    lastAt: pick(row, 'lastAt', 'last_at'),
  };
}

/** The usage answer as {byDay, bySandbox, byModel}, each a list of usageRow, and `refused`. */
export function readUsage(data) {
  const list = (...names) => (pick(data || {}, ...names) || []).map(usageRow);
  return {
    byDay: list('byDay', 'days', 'by_day'),
    bySandbox: list('bySandbox', 'sandboxes', 'by_sandbox'),
    byModel: list('byModel', 'models', 'by_model'),
    refused: (pick(data || {}, 'refused') || []).map(refusedRow),
    limits: (data && data.limits) || null,
  };
}

export function useUsage(workspaceId) {
  const [usage, setUsage] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    get(path`/api/workspaces/${workspaceId}/usage`).then((data) => setUsage(readUsage(data)), setError);
  }, [workspaceId]);
  return { usage, error };
}

function DayChart({ days }) {
  const max = Math.max(1, ...days.map((d) => d.total));
  const barWidth = 28;
  const gap = 8;
  const height = 140;
  const width = days.length * (barWidth + gap);
  return html`<figure class="chart">
    <svg viewBox=${`0 0 ${width} ${height + 24}`} role="img" aria-labelledby="chart-caption" preserveAspectRatio="xMinYMin meet">
      ${days.map((d, i) => {
        const h = Math.max(1, Math.round((d.total / max) * height));
        const x = i * (barWidth + gap);
        return html`<g>
          <title>${d.day}: ${number(d.total)} tokens, ${number(d.requests)} requests</title>
          <rect class="bar" x=${x} y=${height - h} width=${barWidth} height=${h} rx="3" />
          <text class="axis" x=${x + barWidth / 2} y=${height + 16} text-anchor="middle">${String(d.day).slice(5)}</text>
        </g>`;
      })}
    </svg>
    <figcaption id="chart-caption">Tokens per day (UTC), highest ${number(max)}</figcaption>
  </figure>`;
}

export function UsageTable({ rows, label, caption }) {
  return html`<table class="table numeric">
    <caption>${caption}</caption>
    <thead><tr><th scope="col">${label[0]}</th><th scope="col">Requests</th><th scope="col">Input</th>
      <th scope="col">Output</th><th scope="col">Cache read</th><th scope="col">Cache write</th><th scope="col">Total</th></tr></thead>
    <tbody>${rows.map((r) => html`<tr>
      <th scope="row">${r[label[1]]}</th><td>${number(r.requests)}</td><td>${number(r.input)}</td><td>${number(r.output)}</td>
      <td>${number(r.cacheRead)}</td><td>${number(r.cacheWrite)}</td><td>${number(r.total)}</td>
    </tr>`)}</tbody>
  </table>`;
}

function Limits({ limits }) {
  if (!limits) return null;
  const rpm = limits.rpm ? `at most ${number(limits.rpm)} requests per minute` : 'no per-minute limit';
  const daily = limits.tokensPerDay ? `at most ${number(limits.tokensPerDay)} tokens per day` : 'no daily token limit';
  return html`<p class="muted">Limits for this workspace: ${rpm}, ${daily}.</p>`;
}

const clock = (when) => {
  const date = new Date(when);
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
};

/** Calls the proxy turned away, per sandbox: "refused: 12 × quota reached, last 14:03". */
export function RefusedCalls({ rows }) {
  if (!rows || rows.length === 0) return null;
  const sandboxes = [];
  for (const row of rows) {
    const key = row.sandboxId || row.sandboxName;
    let entry = sandboxes.find((s) => s.key === key);
    if (!entry) sandboxes.push((entry = { key, name: row.sandboxName, rows: [] }));
    entry.rows.push(row);
  }
  return html`<section class="refused" aria-labelledby="refused-title">
    <h2 id="refused-title">Refused calls</h2>
    <p class="muted small">Calls the server answered itself without reaching Anthropic; they used no tokens.</p>
    <ul class="refused-list">${sandboxes.map((s) => html`<li data-sandbox=${s.key}>
      <strong>${s.name}</strong>${' '}
      ${s.rows.map((r, i) => html`<span class="refused-reason">${i > 0 ? '; ' : ''}refused: ${number(r.count)} × ${r.reason}, last ${clock(r.lastAt)}</span>`)}
    </li>`)}</ul>
  </section>`;
}

export function Usage({ workspace }) {
  const { usage, error } = useUsage(workspace.id);
  const empty = usage && usage.byDay.length === 0 && usage.bySandbox.length === 0;
  return html`<section aria-labelledby="usage-title">
    <h1 id="usage-title">LLM usage <span class="muted small">of ${workspace.name}</span></h1>
    <${ErrorBox} error=${error} />
    ${!usage && !error && html`<${Loading} what="Loading usage" />`}
    ${empty && html`<${Empty}>No LLM calls yet. Sandboxes reach Anthropic through this server, and their token use shows up here.<//>`}
    ${usage && html`<${Limits} limits=${usage.limits} />`}
    ${usage && html`<${RefusedCalls} rows=${usage.refused} />`}
    ${usage && !empty && html`
      ${usage.byDay.length > 0 && html`<${DayChart} days=${usage.byDay} />`}
      <div class="scroll"><${UsageTable} rows=${usage.byDay} label=${['Day', 'day']} caption="By day" /></div>
      <div class="scroll"><${UsageTable} rows=${usage.bySandbox} label=${['Sandbox', 'sandboxName']} caption="By sandbox" /></div>
      <div class="scroll"><${UsageTable} rows=${usage.byModel} label=${['Model', 'model']} caption="By model" /></div>`}
  </section>`;
}
