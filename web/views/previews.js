// A running sandbox's previews: the ports it serves (its dev servers), each with Open (a new
// tab, through the one-time ticket) and, for members who may use it, Make public / Make private.
// Reloaded whenever the workspace's event stream says they changed (a `previews` event) and
// whenever the sandbox's status changes; not asked for while the sandbox is not running (it
// serves no port then, and a sandbox paused or deleted under the page would answer 404).

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, path, put } from '../api.js';
import { canOnSandbox } from '../roles.js';
import { html, Empty, ErrorBox, Loading, useAction, when } from '../ui.js';
import { sandboxFacts } from './sandboxes.js';

function PreviewRow({ sandbox, preview, mayShare, onChange }) {
  const { busy, error, setError, run } = useAction();
  const share = (value) => run(async () => {
    const url = path`/api/sandboxes/${sandbox.id}/previews/${preview.port}/public`;
    onChange(await (value ? put(url) : del(url)));
  });
  const label = (verb) => `${verb} port ${preview.port}`;
  return html`<li class="preview" data-port=${preview.port}>
    <div class="preview-head">
      <strong>Port ${preview.port}</strong>
      ${preview.public && html`<span class="badge public" title=${preview.changedBy ? `Made public by ${preview.changedBy} ${when(preview.changedAt)}` : 'Public'}>Public</span>`}
      <span class="break muted">${preview.url}</span>
    </div>
    <div class="row-actions">
      <a class="button primary" href=${preview.openUrl} target="_blank" rel="noopener" aria-label=${label('Open')}>Open</a>
      ${mayShare && html`<button type="button" disabled=${busy} aria-label=${label(preview.public ? 'Make private' : 'Make public')}
        title=${preview.public ? 'Only members may open it again' : 'Anyone with the link may open it, without signing in, until you make it private or the sandbox pauses'}
        onClick=${() => share(!preview.public)}>${preview.public ? 'Make private' : 'Make public'}</button>`}
      <${ErrorBox} error=${error} onDismiss=${() => setError(null)} />
    </div>
  </li>`;
}

export function Previews({ workspace, sandbox, me, changes = 0 }) {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  const running = sandbox.status === 'running';
  const load = async () => {
    try {
      setList(await get(path`/api/sandboxes/${sandbox.id}/previews`));
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => {
    if (running) load();
  }, [sandbox.id, sandbox.status, changes]);
  const mayShare = canOnSandbox(workspace.role, 'use_sandbox', sandboxFacts(workspace, sandbox, me));
  const changed = (preview) => setList((old) => ({
    ...old,
    previews: old.previews.some((p) => p.port === preview.port)
      ? old.previews.map((p) => (p.port === preview.port ? preview : p))
      : [...old.previews, preview],
  }));
  const previews = running && list ? list.previews : [];
  return html`<section aria-labelledby="previews-title" class="panel" data-previews>
    <h2 id="previews-title">Previews</h2>
    ${running && html`<${ErrorBox} error=${error} />`}
    ${!running && html`<${Empty}>Previews show once the sandbox is running.<//>`}
    ${running && !list && !error && html`<${Loading} what="Loading previews" />`}
    ${running && list && !list.available && html`<${Empty}>This server cannot reach a sandbox's own ports, so it shows no previews.<//>`}
    ${running && list && list.available && previews.length === 0 && html`<${Empty}>${sandbox.type === 'local'
      ? 'This agent shares no ports. Run it with --allow-port 5173 (for example) to preview a dev server.'
      : 'Nothing is listening in this sandbox yet. Start a dev server (npm run dev, for example) and it appears here.'}<//>`}
    ${previews.length > 0 && html`<ul class="previews">
      ${previews.map((p) => html`<${PreviewRow} key=${p.port} sandbox=${sandbox} preview=${p} mayShare=${mayShare} onChange=${changed} />`)}
    </ul>`}
  </section>`;
}
