// The "connect a local agent" dialog: install the agent, start opencode, run one command with a
// one-time code; then it watches the workspace's live sandboxes and says when the agent is in.

import { useEffect, useRef, useState } from '../vendor/hooks.module.js';
import { get, path, post } from '../api.js';
import { html, Dialog, ErrorBox, Loading, when } from '../ui.js';

// Where `agentserver agent connect` looks for opencode by default (--opencode-url).
export const OPENCODE_PORT = 4096;
export const OPENCODE_COMMAND = `opencode serve --port ${OPENCODE_PORT}`;

/** The name as one double-quoted shell word (no expansion inside). */
export function shellQuote(text) {
  return `"${text.replace(/([\\"$`])/g, '\\$1')}"`;
}

/** The one command to run; without a name the agent uses its machine's host name. */
export function connectCommand(origin, code, name, program = 'agentserver') {
  const base = `${program} agent connect --server ${origin} --code ${code}`;
  return name ? `${base} --name ${shellQuote(name)}` : base;
}

/** The first local sandbox that was not there when the dialog opened (by name if one was given). */
export function joined(sandboxes, before, name) {
  const fresh = (sandboxes || []).filter((s) => s.type === 'local' && !before.has(s.id));
  return fresh.find((s) => name && s.name === name) || fresh[0] || null;
}

export function Copyable({ id, text, label, code }) {
  const [copied, setCopied] = useState('');
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied('Copied to the clipboard.');
    } catch {
      // No clipboard permission: select the text so Ctrl+C / long-press copies it.
      const range = document.createRange();
      range.selectNodeContents(document.getElementById(id));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      setCopied('Selected: press Ctrl+C (⌘C) to copy.');
    }
  };
  return html`<div class="command">
    <pre><code id=${id} data-code=${code}>${text}</code></pre>
    <button type="button" onClick=${copy}>${label}</button>
    <p class="muted small" role="status">${copied}</p>
  </div>`;
}

function Install({ install }) {
  if (!install) return html`<${Loading} what="Looking up the agent" />`;
  if (install.download) {
    const url = new URL(install.download, location.origin).href;
    return html`<p>Download it from this server (one file, needs Python 3.11+;
      or <a href=${install.download} download="agentserver-agent.pyz">save it from here</a>):</p>
      <${Copyable} id="download-command" text=${`curl -fLO ${url}`} label="Copy download command" />
      <p class="muted small">Or install it: <code>pip install agentserver==${install.version}</code>.</p>`;
  }
  return html`<p>Install it with <code>pip install agentserver==${install.version}</code>${' '}
    (or run it without installing: <code>uvx --from agentserver==${install.version} agentserver …</code>).</p>`;
}

function Connected({ sandbox }) {
  const online = sandbox.status === 'running';
  return html`<div class="joined" data-sandbox=${sandbox.id}>
    <p class=${online ? 'connected' : ''} role="status">
      ${online ? html`<span class="check" aria-hidden="true">✓</span> Connected: ` : 'Registered: '}
      <strong>${sandbox.name}</strong> ${online ? 'is a sandbox in this workspace now.' : 'waiting for its tunnel…'}
    </p>
    ${sandbox.statusReason && html`<p class="reason">${sandbox.statusReason}.${' '}
      Start opencode on that machine (step 2); this updates by itself.</p>`}
  </div>`;
}

export function AgentDialog({ workspace, sandboxes, onClose }) {
  const [grant, setGrant] = useState(null);
  const [install, setInstall] = useState(null);
  const [error, setError] = useState(null);
  const [name, setName] = useState('');
  // The sandboxes there before this dialog: any new local one is the agent joining.
  const before = useRef(null);
  if (before.current === null && sandboxes) before.current = new Set(sandboxes.map((s) => s.id));

  useEffect(() => {
    post(path`/api/workspaces/${workspace.id}/agent-code`).then(setGrant, setError);
    get('/api/agent/install').then(setInstall, () => setInstall({ version: null, download: null }));
  }, [workspace.id]);

  const program = install?.download ? 'python3 agentserver-agent.pyz' : 'agentserver';
  const command = grant ? connectCommand(location.origin, grant.code, name.trim(), program) : '';
  const sandbox = before.current ? joined(sandboxes, before.current, name.trim()) : null;

  return html`<${Dialog} title="Connect a local agent" onClose=${onClose} labelledBy="agent-title">
    <p>Three steps on the machine that should join <strong>${workspace.name}</strong> as a local sandbox.</p>
    <${ErrorBox} error=${error} />
    <ol class="steps">
      <li><strong>Get the agent.</strong> <${Install} install=${install} /></li>
      <li><strong>Start opencode</strong> (it listens on 127.0.0.1:${OPENCODE_PORT}):
        <${Copyable} id="opencode-command" text=${OPENCODE_COMMAND} label="Copy opencode command" /></li>
      <li><strong>Connect.</strong>
        ${!grant && !error && html`<${Loading} what="Creating a one-time code" />`}
        ${grant && html`
          <label for="agent-name">Name of this machine</label>
          <input id="agent-name" value=${name} maxlength="100" placeholder="this machine's host name"
            onInput=${(e) => setName(e.currentTarget.value)} />
          <${Copyable} id="agent-command" text=${command} label="Copy command" code=${grant.code} />
          <p class="muted small">The code works once and expires at ${when(grant.expiresAt)}.
            Leave the command running: it keeps the tunnel up and reconnects by itself.</p>`}
      </li>
    </ol>
    ${sandbox ? html`<${Connected} sandbox=${sandbox} />`
      : grant && html`<p class="muted small waiting" role="status">Waiting for the agent to connect…</p>`}
    <div class="actions"><button type="button" onClick=${onClose}>Close</button></div>
  <//>`;
}
