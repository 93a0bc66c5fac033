// Shared building blocks: htm binding, links and navigation, dialogs, states, icons, formats.

import { h } from './vendor/preact.module.js';
import { useEffect, useRef, useState } from './vendor/hooks.module.js';
import htm from './vendor/htm.module.js';

export const html = htm.bind(h);

// --- navigation (history API; the server answers index.html for every non-API path) ---

const routeListeners = new Set();

export function navigate(to, { replace = false } = {}) {
  if (to === location.pathname + location.search) return;
  history[replace ? 'replaceState' : 'pushState'](null, '', to);
  routeListeners.forEach((listener) => listener());
}

/** The current location path, re-rendering on navigation and back/forward. */
export function useLocation() {
  const [where, setWhere] = useState(location.pathname);
  useEffect(() => {
    const update = () => setWhere(location.pathname);
    routeListeners.add(update);
    addEventListener('popstate', update);
    return () => {
      routeListeners.delete(update);
      removeEventListener('popstate', update);
    };
  }, []);
  return where;
}

export function Link({ href, children, ...rest }) {
  const onClick = (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${onClick} ...${rest}>${children}</a>`;
}

// --- states ---

export function Loading({ what = 'Loading' }) {
  return html`<p class="loading" role="status"><span class="spinner" aria-hidden="true"></span>${what}…</p>`;
}

export function Empty({ children }) {
  return html`<p class="empty">${children}</p>`;
}

export function ErrorBox({ error, onDismiss }) {
  if (!error) return null;
  const text = typeof error === 'string' ? error : error.message;
  return html`<div class="error" role="alert">
    <span>${text}</span>
    ${onDismiss && html`<button type="button" class="link" onClick=${onDismiss}>Dismiss</button>`}
  </div>`;
}

/** Runs an async action, tracking busy and error state for a button or form. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async (work) => {
    setBusy(true);
    setError(null);
    try {
      return await work();
    } catch (err) {
      setError(err);
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, setError, run };
}

// --- dialogs (native <dialog>: focus trap, Escape to close, inert background) ---

export function Dialog({ title, onClose, children, labelledBy = 'dialog-title' }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    const cancel = (event) => {
      event.preventDefault();
      onClose();
    };
    dialog.addEventListener('cancel', cancel);
    return () => {
      dialog.removeEventListener('cancel', cancel);
      // Closing (rather than just removing) hands focus back to the button that opened it.
      if (dialog.open) dialog.close();
    };
  }, []);
  return html`<dialog ref=${ref} class="dialog" aria-labelledby=${labelledBy}>
    <h2 id=${labelledBy}>${title}</h2>
    ${children}
  </dialog>`;
}

/** Asks before something that cannot be undone; `onConfirm` may be async. */
export function Confirm({ title, message, action = 'Delete', onConfirm, onClose }) {
  const { busy, error, run } = useAction();
  const confirm = () => run(async () => {
    await onConfirm();
    onClose();
  });
  return html`<${Dialog} title=${title} onClose=${onClose} labelledBy="confirm-title">
    <p>${message}</p>
    <${ErrorBox} error=${error} />
    <div class="actions">
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="button" class="danger" disabled=${busy} onClick=${confirm}>${busy ? 'Working…' : action}</button>
    </div>
  <//>`;
}

// --- icons (decorative: buttons carry their own labels) ---

export function LaptopIcon() {
  return html`<svg class="icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
    <rect x="4" y="5" width="16" height="11" rx="1.5" fill="none" stroke="currentColor" stroke-width="2"/>
    <path d="M2 19h20" stroke="currentColor" stroke-width="2" stroke-linecap="round"/>
  </svg>`;
}

// --- formats ---

export function when(value) {
  if (!value) return '—';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** How long ago, in words ("40 s ago", "5 min ago", "3 h ago"), then the date. */
export function ago(value, now = Date.now()) {
  if (!value) return 'never';
  const seconds = Math.max(0, Math.round((now - new Date(value).getTime()) / 1000));
  if (Number.isNaN(seconds)) return String(value);
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return when(value);
}

export function number(value) {
  return Number(value || 0).toLocaleString();
}

export const STATUS_TEXT = {
  creating: 'Creating', running: 'Running', pausing: 'Pausing', paused: 'Paused',
  resuming: 'Resuming', offline: 'Offline', failed: 'Failed',
};
export const TRANSITIONAL = new Set(['creating', 'pausing', 'resuming']);

export function StatusBadge({ sandbox }) {
  const status = sandbox.status;
  return html`<span class=${`badge status-${status}`} data-status=${status}>
    ${TRANSITIONAL.has(status) && html`<span class="spinner" aria-hidden="true"></span>`}
    ${STATUS_TEXT[status] || status}
  </span>`;
}
