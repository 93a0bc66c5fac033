// The JSON API client: one fetch wrapper, readable error messages, and sign-out on 401.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onSignedOut = () => {};

/** Called whenever the server says the session is gone (401), so the app shows sign-in. */
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

function messageFor(status, data) {
  if (data && typeof data === 'object' && data.error && data.error.message) return data.error.message;
  if (status === 404) return 'Not found (this server may not offer that feature yet).';
  if (status === 502 || status === 503) return 'The server is unavailable right now; try again shortly.';
  return `The server answered ${status}.`;
}

/** Calls the API; resolves with the JSON (or text) body, rejects with an ApiError. */
export async function api(method, path, body) {
  const options = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the server; check your connection.');
  }
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  const data = type.includes('json') ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    // A failed sign-in is also a 401, but it is not a lost session.
    if (response.status === 401 && !path.startsWith('/api/auth/')) onSignedOut();
    throw new ApiError(response.status, data?.error?.code || 'http_error', messageFor(response.status, data));
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body === undefined ? {} : body);
export const put = (path, body) => api('PUT', path, body);
export const patch = (path, body) => api('PATCH', path, body);
export const del = (path) => api('DELETE', path);

/** The path with its segments escaped: ids come from the server but never trust them in a URL. */
export function path(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ''), '');
}
