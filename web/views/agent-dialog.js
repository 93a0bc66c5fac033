// The "connect a local agent" dialog: a one-time code and the command that uses it.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { path, post } from '../api.js';
import { html, Dialog, ErrorBox, Loading, when } from '../ui.js';

/** The name as one double-quoted shell word (no expansion inside). */
export function shellQuote(text) {
  return `"${text.replace(/([\\"$`])/g, '\\$1')}"`;
}

export function connectCommand(origin, code, name) {
  return `agentserver agent connect --server ${origin} --code ${code} --name ${shellQuote(name || 'My PC')}`;
}

export function AgentDialog({ workspace, onClose }) {
  const [grant, setGrant] = useState(null);
  const [error, setError] = useState(null);
  const [name, setName] = useState('My PC');
  const [copied, setCopied] = useState('');

  useEffect(() => {
    post(path`/api/workspaces/${workspace.id}/agent-code`).then(setGrant, setError);
  }, [workspace.id]);

  const command = grant ? connectCommand(location.origin, grant.code, name.trim()) : '';
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(command);
      setCopied('Copied to the clipboard.');
    } catch {
      // No clipboard permission: select the text so Ctrl+C / long-press copies it.
      const range = document.createRange();
      range.selectNodeContents(document.getElementById('agent-command'));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      setCopied('Selected: press Ctrl+C (⌘C) to copy.');
    }
  };

  return html`<${Dialog} title="Connect a local agent" onClose=${onClose} labelledBy="agent-title">
    <p>Run this on the machine that should join <strong>${workspace.name}</strong> as a local sandbox.
      It needs <code>agentserver</code> and <code>opencode</code> installed there.</p>
    <${ErrorBox} error=${error} />
    ${!grant && !error && html`<${Loading} what="Creating a one-time code" />`}
    ${grant && html`
      <label for="agent-name">Name of this machine</label>
      <input id="agent-name" value=${name} maxlength="100" onInput=${(e) => setName(e.currentTarget.value)} />
      <div class="command">
        <pre><code id="agent-command" data-code=${grant.code}>${command}</code></pre>
        <button type="button" onClick=${copy}>Copy command</button>
      </div>
      <p class="muted small" role="status">${copied}</p>
      <p class="muted small">The code works once and expires at ${when(grant.expiresAt)}.</p>`}
    <div class="actions"><button type="button" onClick=${onClose}>Close</button></div>
  <//>`;
}
