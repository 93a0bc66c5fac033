// One sandbox: its facts (live), actions, the tail of its logs and its LLM usage.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { get, path } from '../api.js';
import { canOnSandbox } from '../roles.js';
import { ago, html, Empty, ErrorBox, Link, Loading, navigate, number, StatusBadge, useAction, when } from '../ui.js';
import { PrivateBadge, SandboxActions, sandboxFacts, useSandboxes } from './sandboxes.js';
import { SetupFacts } from './sandbox-setup.js';
import { Previews } from './previews.js';
import { useUsage } from './usage.js';

/** Log lines from `{"logs": "text"}` (what the server sends), `{"lines": [...]}` or plain text. */
export function logLines(data) {
  const body = data && typeof data === 'object' ? (data.logs ?? data.lines) : data;
  if (Array.isArray(body)) return body;
  if (typeof body === 'string') return body ? body.replace(/\n$/, '').split('\n') : [];
  return [];
}

function Logs({ sandbox }) {
  const [lines, setLines] = useState(null);
  const { busy, error, run } = useAction();
  const load = () => run(async () => setLines(logLines(await get(path`/api/sandboxes/${sandbox.id}/logs`))));
  useEffect(() => { load(); }, [sandbox.id]);
  return html`<section aria-labelledby="logs-title" class="panel">
    <div class="heading">
      <h2 id="logs-title">Logs</h2>
      <button type="button" onClick=${load} disabled=${busy}>${busy ? 'Loading…' : 'Refresh logs'}</button>
    </div>
    <${ErrorBox} error=${error} />
    ${lines && lines.length === 0 && html`<${Empty}>No log output yet.<//>`}
    ${lines && lines.length > 0 && html`<pre class="logs" tabindex="0" aria-label="Log output">${lines.join('\n')}</pre>`}
  </section>`;
}

function SandboxUsage({ workspace, sandbox }) {
  const { usage, error } = useUsage(workspace.id);
  const row = usage && usage.bySandbox.find((r) => r.sandboxId === sandbox.id);
  return html`<section aria-labelledby="sandbox-usage-title" class="panel">
    <h2 id="sandbox-usage-title">LLM usage</h2>
    <${ErrorBox} error=${error} />
    ${!usage && !error && html`<${Loading} what="Loading usage" />`}
    ${usage && !row && html`<${Empty}>This sandbox has made no LLM calls yet.<//>`}
    ${row && html`<dl class="facts">
      <dt>Requests</dt><dd>${number(row.requests)}</dd>
      <dt>Input tokens</dt><dd>${number(row.input)}</dd>
      <dt>Output tokens</dt><dd>${number(row.output)}</dd>
      <dt>Cache read</dt><dd>${number(row.cacheRead)}</dd>
      <dt>Cache write</dt><dd>${number(row.cacheWrite)}</dd>
    </dl>`}
  </section>`;
}

function useCreatorName(workspace, userId) {
  const [name, setName] = useState(null);
  useEffect(() => {
    if (!userId) return;
    get(path`/api/workspaces/${workspace.id}/members`).then(
      (members) => setName((members.find((m) => m.userId === userId) || {}).username || null),
      () => setName(null),
    );
  }, [workspace.id, userId]);
  return name;
}

/** `90` → "1 minute 30 seconds" (the words of the wake page, proxy/pages.py). */
export function durationWords(seconds) {
  let left = Math.max(0, Math.round(seconds));
  const parts = [];
  for (const [unit, size] of [['hour', 3600], ['minute', 60], ['second', 1]]) {
    const count = Math.floor(left / size);
    left -= count * size;
    if (count) parts.push(`${count} ${unit}${count === 1 ? '' : 's'}`);
  }
  return parts.join(' ') || '0 seconds';
}

/** Why the sandbox is paused (or pausing, or waking), in words; null otherwise. */
export function pauseText(sandbox) {
  if (!['pausing', 'paused', 'resuming'].includes(sandbox.status)) return null;
  if (sandbox.pausedReason === 'idle') {
    if (!sandbox.pausedIdleSeconds) return 'Paused because nobody used it for a while';
    return `Paused after ${durationWords(sandbox.pausedIdleSeconds)} without activity`;
  }
  if (sandbox.pausedReason === 'user') return `Paused by ${sandbox.pausedBy || 'a former member'}`;
  return null;
}

export function SandboxDetail({ workspace, me, sandboxId, onGone }) {
  const { sandboxes, error, upsert, remove, previewChanges } = useSandboxes(workspace.id, onGone);
  const sandbox = sandboxes && sandboxes.find((s) => s.id === sandboxId);
  const creator = useCreatorName(workspace, sandbox && sandbox.createdBy);
  const back = path`/w/${workspace.id}`;
  const removed = (id) => {
    remove(id);
    navigate(back);
  };
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (!sandboxes) return html`<${Loading} what="Loading sandbox" />`;
  if (!sandbox) {
    return html`<section><h1>Sandbox not found</h1><p>It may have been deleted. <${Link} href=${back}>Back to the sandboxes<//></p></section>`;
  }
  return html`<section aria-labelledby="sandbox-title">
    <p><${Link} href=${back}>← All sandboxes<//></p>
    <div class="heading">
      <h1 id="sandbox-title">${sandbox.name}</h1>
      <${StatusBadge} sandbox=${sandbox} />
      <${PrivateBadge} sandbox=${sandbox} />
    </div>
    ${sandbox.statusReason && html`<p class="reason" role="status">${sandbox.statusReason}</p>`}
    <${SandboxActions} workspace=${workspace} sandbox=${sandbox} me=${me} onChange=${upsert} onDeleted=${removed} />
    <section class="panel" aria-labelledby="facts-title">
      <h2 id="facts-title">Details</h2>
      <dl class="facts">
        <dt>Type</dt><dd>${sandbox.type}</dd>
        <dt>Created by</dt><dd>${creator || sandbox.createdBy || '—'}</dd>
        <dt>Created</dt><dd>${when(sandbox.createdAt)}</dd>
        <dt>Last activity</dt><dd>${when(sandbox.lastActivityAt)}</dd>
        ${sandbox.type === 'local' && html`
          <dt>Agent last seen</dt><dd class="last-seen">${sandbox.status === 'running' ? 'now (connected)' : `${ago(sandbox.lastSeenAt)} (${when(sandbox.lastSeenAt)})`}</dd>`}
        <dt>Paused at</dt><dd>${when(sandbox.pausedAt)}</dd>
        ${pauseText(sandbox) && html`<dt>Why paused</dt><dd data-pause-reason>${pauseText(sandbox)}</dd>`}
        <dt>Updated</dt><dd>${when(sandbox.updatedAt)}</dd>
        <dt>Address</dt><dd class="break">${sandbox.url || '—'}</dd>
        <dt>Id</dt><dd><code>${sandbox.id}</code></dd>
        ${sandbox.diskPath && html`
          <dt>Shared workspace disk</dt><dd class="disk-path"><code>${sandbox.diskPath}</code> — files here are shared by every sandbox in this workspace and kept when sandboxes are deleted</dd>`}
        ${sandbox.type !== 'local' && canOnSandbox(workspace.role, 'view_sandbox', sandboxFacts(workspace, sandbox, me)) && html`<${SetupFacts} sandbox=${sandbox} />`}
      </dl>
    </section>
    ${canOnSandbox(workspace.role, 'view_sandbox', sandboxFacts(workspace, sandbox, me)) && html`<${Previews}
      workspace=${workspace} sandbox=${sandbox} me=${me} changes=${previewChanges[sandbox.id] || 0} />`}
    ${canOnSandbox(workspace.role, 'view_logs', sandboxFacts(workspace, sandbox, me)) && html`<${Logs} sandbox=${sandbox} />`}
    <${SandboxUsage} workspace=${workspace} sandbox=${sandbox} />
  </section>`;
}
