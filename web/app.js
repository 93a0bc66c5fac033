// Entry point: boot (who am I), client-side routes, and the page frame around each screen.

import { render } from './vendor/preact.module.js';
import { useCallback, useEffect, useState } from './vendor/hooks.module.js';
import { get, post, whenSignedOut } from './api.js';
import { can } from './roles.js';
import { html, ErrorBox, Link, Loading, navigate, useLocation } from './ui.js';
import { SignIn } from './views/signin.js';
import { Workspaces } from './views/workspaces.js';
import { Members } from './views/members.js';
import { Sandboxes } from './views/sandboxes.js';
import { SandboxDetail } from './views/sandbox-detail.js';
import { Usage } from './views/usage.js';
import { WorkspaceSettings } from './views/workspace-settings.js';
import { Admin } from './views/admin.js';
import { Account } from './views/account.js';
import { Tokens } from './views/tokens.js';
import { CliLogin } from './views/cli-login.js';

const LAST_WORKSPACE = 'agentserver.workspace';

/** The screen for a path: which view, and its parameters. */
export function parseRoute(pathname) {
  const parts = pathname.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return { view: 'home' };
  if (parts[0] === 'workspaces' && parts.length === 1) return { view: 'workspaces' };
  if (parts[0] === 'admin' && parts.length === 1) return { view: 'admin' };
  if (parts[0] === 'account' && parts.length === 1) return { view: 'account' };
  if (parts[0] === 'tokens' && parts.length === 1) return { view: 'tokens' };
  if (parts[0] === 'cli-login' && parts.length === 1) return { view: 'cli-login' };
  if (parts[0] === 'w' && parts.length >= 2) {
    const workspaceId = parts[1];
    if (parts.length === 2) return { view: 'sandboxes', workspaceId };
    if (parts[2] === 'members' && parts.length === 3) return { view: 'members', workspaceId };
    if (parts[2] === 'usage' && parts.length === 3) return { view: 'usage', workspaceId };
    if (parts[2] === 'settings' && parts.length === 3) return { view: 'settings', workspaceId };
    if (parts[2] === 'sandboxes' && parts.length === 4) return { view: 'sandbox', workspaceId, sandboxId: parts[3] };
  }
  return { view: 'notfound' };
}

function WorkspaceSwitcher({ workspaces, current, section }) {
  if (workspaces.length === 0) return null;
  const change = (event) => {
    const id = event.currentTarget.value;
    navigate(`/w/${encodeURIComponent(id)}${section ? `/${section}` : ''}`);
  };
  return html`<div class="switcher">
    <label for="workspace-switcher" class="visually-hidden">Workspace</label>
    <select id="workspace-switcher" value=${current || ''} onChange=${change}>
      ${!current && html`<option value="" disabled>Choose a workspace</option>`}
      ${workspaces.map((ws) => html`<option value=${ws.id}>${ws.name}</option>`)}
    </select>
  </div>`;
}

/** What the server says every signed-in user should know (e.g. sandboxes run unisolated). */
function Warnings({ warnings }) {
  if (!warnings || warnings.length === 0) return null;
  return html`<div class="server-warnings" role="alert">
    ${warnings.map((text) => html`<p>${text}</p>`)}
  </div>`;
}

function Frame({ me, workspaces, route, warnings, onSignOut, onSignOutEverywhere, children }) {
  // Off a workspace's pages (workspace list, admin) the tabs keep pointing at the last one used.
  const last = localStorage.getItem(LAST_WORKSPACE);
  const wid = route.workspaceId || (workspaces.some((ws) => ws.id === last) ? last : workspaces[0] && workspaces[0].id);
  const base = wid ? `/w/${encodeURIComponent(wid)}` : null;
  const section = { members: 'members', usage: 'usage', settings: 'settings' }[route.view] || '';
  const tab = (href, label, active) => html`<li><${Link} href=${href} aria-current=${active ? 'page' : undefined}>${label}<//></li>`;
  return html`<div class="frame">
    <header class="topbar">
      <${Link} href="/" class="brand">agentserver<//>
      <${WorkspaceSwitcher} workspaces=${workspaces} current=${wid} section=${section} />
      <nav aria-label="Main">
        <ul class="tabs">
          ${base && tab(base, 'Sandboxes', route.view === 'sandboxes' || route.view === 'sandbox')}
          ${base && tab(`${base}/members`, 'Members', route.view === 'members')}
          ${base && tab(`${base}/usage`, 'Usage', route.view === 'usage')}
          ${base && tab(`${base}/settings`, 'Settings', route.view === 'settings')}
          ${tab('/workspaces', 'Workspaces', route.view === 'workspaces')}
          ${me.role === 'admin' && tab('/admin', 'Admin', route.view === 'admin')}
          ${tab('/tokens', 'Tokens', route.view === 'tokens')}
          ${tab('/account', 'Your account', route.view === 'account')}
        </ul>
      </nav>
      <div class="user">
        <span class="who" title=${me.email || ''}>${me.username}</span>
        <button type="button" onClick=${onSignOut}>Sign out</button>
        <details class="account">
          <summary>Account</summary>
          <div class="account-menu">
            <p>Ends every session of yours: other browsers and devices, and every sandbox tab.</p>
            <button type="button" onClick=${onSignOutEverywhere}>Sign out everywhere</button>
          </div>
        </details>
      </div>
    </header>
    <${Warnings} warnings=${warnings} />
    <main id="main">${children}</main>
  </div>`;
}

/** Shown on every screen of a workspace where the user is a guest: they may look, not change. */
function ReadOnlyNotice({ workspace }) {
  if (!workspace || can(workspace.role, 'use_sandbox')) return null;
  return html`<p class="notice read-only" role="note">
    <strong>Read-only.</strong> You are a ${workspace.role} in ${workspace.name}: you can look at its
    sandboxes, members and usage, but not change anything. Ask an owner for another role.
  </p>`;
}

function Screen({ route, me, workspaces, reload, config, gone, onGone }) {
  const workspace = route.workspaceId ? workspaces.find((ws) => ws.id === route.workspaceId) : null;
  if (route.workspaceId && !workspace) {
    if (gone === route.workspaceId) {
      return html`<section role="alert"><h1>Workspace deleted</h1>
        <p>This workspace was deleted, or you were removed from it. <${Link} href="/workspaces">See your workspaces<//>.</p></section>`;
    }
    return html`<section><h1>Workspace not found</h1>
      <p>It does not exist, or you are not a member. <${Link} href="/workspaces">See your workspaces<//>.</p></section>`;
  }
  return html`<${ReadOnlyNotice} workspace=${workspace} />${screenOf(route, me, workspace, workspaces, reload, config, onGone)}`;
}

function screenOf(route, me, workspace, workspaces, reload, config, onGone) {
  switch (route.view) {
    case 'workspaces': return html`<${Workspaces} workspaces=${workspaces} reload=${reload} />`;
    case 'sandboxes': return html`<${Sandboxes} workspace=${workspace} me=${me} types=${config.sandboxTypes} onGone=${onGone} key=${workspace.id} />`;
    case 'sandbox': return html`<${SandboxDetail} workspace=${workspace} me=${me} sandboxId=${route.sandboxId} onGone=${onGone} key=${route.sandboxId} />`;
    case 'members': return html`<${Members} workspace=${workspace} me=${me} reload=${reload} key=${workspace.id} />`;
    case 'usage': return html`<${Usage} workspace=${workspace} key=${workspace.id} />`;
    case 'settings': return html`<${WorkspaceSettings} workspace=${workspace} reload=${reload} key=${workspace.id} />`;
    case 'account': return html`<${Account} me=${me} />`;
    case 'tokens': return html`<${Tokens} me=${me} workspaces=${workspaces} />`;
    case 'cli-login': return html`<${CliLogin} me=${me} />`;
    case 'admin':
      return me.role === 'admin' ? html`<${Admin} me=${me} />`
        : html`<section><h1>Admin</h1><p>Only the server admin can see this page.</p></section>`;
    default: return html`<section><h1>Page not found</h1><p><${Link} href="/">Go to the start page<//></p></section>`;
  }
}

function App() {
  const pathname = useLocation();
  const [state, setState] = useState({ phase: 'loading' });
  const [workspaces, setWorkspaces] = useState([]);
  const [gone, setGone] = useState(null);
  const route = parseRoute(pathname);

  const boot = useCallback(async () => {
    try {
      const config = await get('/api/auth/config');
      if (!config.user) return setState({ phase: 'signin', config });
      setWorkspaces(await get('/api/workspaces'));
      setState({ phase: 'ready', config, me: config.user });
    } catch (error) {
      setState({ phase: 'error', error });
    }
  }, []);
  const reload = useCallback(async () => setWorkspaces(await get('/api/workspaces')), []);
  // A workspace open in this tab was deleted: the list drops it and the screen says so, once.
  const onGone = useCallback((id) => {
    setGone(id);
    reload().catch(() => {});
  }, []);

  useEffect(() => {
    whenSignedOut(() => setState((s) => ({ phase: 'signin', config: s.config || {} })));
    boot();
  }, []);

  // The start page opens the last used workspace, or the workspace list when there is none.
  useEffect(() => {
    if (state.phase !== 'ready' || route.view !== 'home') return;
    const last = localStorage.getItem(LAST_WORKSPACE);
    const pick = workspaces.find((ws) => ws.id === last) || workspaces[0];
    navigate(pick ? `/w/${encodeURIComponent(pick.id)}` : '/workspaces', { replace: true });
  }, [state.phase, route.view, workspaces]);
  useEffect(() => {
    if (route.workspaceId) localStorage.setItem(LAST_WORKSPACE, route.workspaceId);
  }, [route.workspaceId]);
  useEffect(() => {
    const titles = { workspaces: 'Workspaces', admin: 'Admin', account: 'Account', tokens: 'Tokens', 'cli-login': 'Command-line sign-in', members: 'Members', usage: 'Usage', settings: 'Settings', sandboxes: 'Sandboxes', sandbox: 'Sandbox' };
    document.title = titles[route.view] ? `${titles[route.view]} · agentserver` : 'agentserver';
  }, [route.view]);

  const signOut = async (everywhere) => {
    await post(everywhere === true ? '/api/auth/logout-all' : '/api/auth/logout').catch(() => {});
    setWorkspaces([]);
    navigate('/', { replace: true });
    boot();
  };

  if (state.phase === 'loading') return html`<${Loading} />`;
  if (state.phase === 'error') {
    return html`<main class="center"><${ErrorBox} error=${state.error} />
      <button type="button" onClick=${boot}>Try again</button></main>`;
  }
  if (state.phase === 'signin') return html`<${SignIn} config=${state.config} onSignedIn=${boot} />`;
  return html`<${Frame} me=${state.me} workspaces=${workspaces} route=${route}
    warnings=${state.config.warnings}
    onSignOut=${() => signOut(false)} onSignOutEverywhere=${() => signOut(true)}>
    ${route.view === 'home' ? html`<${Loading} />` : html`<${Screen} route=${route} me=${state.me} workspaces=${workspaces} reload=${reload}
      config=${state.config} gone=${gone} onGone=${onGone} />`}
  <//>`;
}

render(html`<${App} />`, document.getElementById('app'));
