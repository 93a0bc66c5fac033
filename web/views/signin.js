// Sign in and register with a password, or through any configured SSO provider.

import { useState } from '../vendor/hooks.module.js';
import { post } from '../api.js';
import { html, ErrorBox, useAction } from '../ui.js';

function Providers({ providers }) {
  if (!providers || providers.length === 0) return null;
  return html`<div class="providers">
    <p class="divider"><span>or</span></p>
    ${providers.map((p) => html`<a class="button wide" href=${p.loginUrl}>Sign in with ${p.name}</a>`)}
  </div>`;
}

export function SignIn({ config, onSignedIn }) {
  const setup = config.setupNeeded === true;
  const open = config.registrationOpen !== false && !setup;
  const [mode, setMode] = useState(setup ? 'register' : 'signin');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [email, setEmail] = useState('');
  const { busy, error, setError, run } = useAction();
  const registering = mode === 'register';

  const submit = (event) => {
    event.preventDefault();
    run(async () => {
      if (registering) {
        await post('/api/auth/register', { username, password, ...(email ? { email } : {}) });
      } else {
        await post('/api/auth/login', { username, password });
      }
      await onSignedIn();
    });
  };
  const toggle = () => {
    setError(null);
    setMode(registering ? 'signin' : 'register');
  };

  return html`<main class="center">
    <section class="card signin" aria-labelledby="signin-title">
      <h1 id="signin-title">agentserver</h1>
      ${setup
        ? html`<h2 class="setup-title">Create the admin account</h2>
          <p class="muted">Nobody has an account on this server yet: the first one becomes its
            admin, who can manage users and every workspace.</p>`
        : html`<p class="muted">${registering ? 'Create an account' : 'Sign in to your account'}</p>`}
      <form onSubmit=${submit}>
        <label for="username">${registering ? 'Username' : 'Username or email'}</label>
        <input id="username" name="username" autocomplete="username" required value=${username}
          onInput=${(e) => setUsername(e.currentTarget.value)} />
        ${registering && html`
          <label for="email">Email <span class="muted">(optional)</span></label>
          <input id="email" name="email" type="email" autocomplete="email" value=${email}
            onInput=${(e) => setEmail(e.currentTarget.value)} />`}
        <label for="password">Password</label>
        <input id="password" name="password" type="password" required
          aria-describedby=${registering ? 'password-rules' : undefined}
          autocomplete=${registering ? 'new-password' : 'current-password'} value=${password}
          onInput=${(e) => setPassword(e.currentTarget.value)} />
        ${registering && html`<p id="password-rules" class="hint muted">
          At least 8 characters, not a common password and not the username.</p>`}
        <${ErrorBox} error=${error} />
        <button type="submit" class="primary wide" disabled=${busy || !username || !password}>
          ${busy
            ? (registering ? 'Creating account…' : 'Signing in…')
            : (setup ? 'Create admin account' : registering ? 'Create account' : 'Sign in')}
        </button>
      </form>
      ${open && html`<p class="toggle">
        ${registering ? 'Already have an account? ' : 'No account? '}
        <button type="button" class="link" onClick=${toggle}>${registering ? 'Sign in' : 'Create one'}</button>
      </p>`}
      <${Providers} providers=${config.providers} />
    </section>
  </main>`;
}
