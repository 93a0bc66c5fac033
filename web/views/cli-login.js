// `agentserver login` without a token: the signed-in person approves (or denies) the command
// line's request for a new token, shown by its code at /cli-login?code=….

import { useEffect, useState } from '../vendor/hooks.module.js';
import { get, post } from '../api.js';
import { html, ErrorBox, Loading, useAction } from '../ui.js';

export function CliLogin({ me }) {
  const code = new URLSearchParams(location.search).get('code') || '';
  const [request, setRequest] = useState(null);
  const [error, setError] = useState(null);
  const [answer, setAnswer] = useState(null);
  const { busy, error: failed, run } = useAction();
  useEffect(() => {
    get(`/api/cli-login/pending?code=${encodeURIComponent(code)}`).then(setRequest, setError);
  }, [code]);
  const respond = (approve) => run(async () => {
    const result = await post('/api/cli-login/approve', { code, approve });
    setAnswer(result.status);
  });
  let body;
  if (answer === 'approved') {
    body = html`<p role="status">Approved. The command line has its token now: you can go back to the terminal.</p>`;
  } else if (answer === 'denied') {
    body = html`<p role="status">Denied. The command line gets no token.</p>`;
  } else if (error) {
    body = html`<${ErrorBox} error=${error} />`;
  } else if (!request) {
    body = html`<${Loading} what="Looking up the request" />`;
  } else {
    body = html`<p>A command line asks for a new API token of <strong>${me.username}</strong>.
      Approve only if you just ran <code>agentserver login</code> or <code>agentserver tokens create</code> yourself.</p>
      <dl class="facts">
        <dt>Name</dt><dd>${request.name}</dd>
        <dt>Scope</dt><dd>${request.scope === 'read' ? 'read (look only)' : 'full'}</dd>
        <dt>Workspace</dt><dd>${request.workspaceName || 'all your workspaces'}</dd>
        <dt>Expires after</dt><dd>${request.expiresInDays} days</dd>
      </dl>
      <${ErrorBox} error=${failed} />
      <div class="actions">
        <button type="button" onClick=${() => respond(false)} disabled=${busy}>Deny</button>
        <button type="button" class="primary" onClick=${() => respond(true)} disabled=${busy}>Approve</button>
      </div>`;
  }
  return html`<section class="panel" aria-labelledby="cli-login-title">
    <h1 id="cli-login-title">Command-line sign-in</h1>
    ${body}
  </section>`;
}
