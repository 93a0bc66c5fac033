// A live character count for a name field, against the length the API accepts (no silent cut).

import { useState } from '../vendor/hooks.module.js';
import { html, ErrorBox, useAction } from '../ui.js';

/** The API's limit for workspace and sandbox names (api/workspaces.py NAME_MAX). */
export const NAME_MAX = 100;

/** What the API counts: characters (not UTF-16 units) of the trimmed name. */
export const nameLength = (value) => [...value.trim()].length;

export const nameTooLong = (value, max = NAME_MAX) => nameLength(value) > max;

/** "12 / 100", or how many characters too many, shown next to the field it describes. */
export function CharCount({ id, value, max = NAME_MAX }) {
  const count = nameLength(value);
  const over = count > max;
  return html`<span id=${id} class="char-count small" data-over=${over ? 'true' : 'false'}
    style=${over ? 'color: var(--danger); font-weight: 600' : 'color: var(--muted)'}
    aria-live=${over ? 'polite' : 'off'}>
    ${over ? `${count} / ${max} characters: ${count - max} too many` : `${count} / ${max}`}
  </span>`;
}

/** An inline form for a new name (workspace or sandbox), with the live count; `save(name)`
 * stores the trimmed name, then the form closes through `onDone`. */
export function RenameForm({ id, current, ariaLabel, save, onDone }) {
  const [name, setName] = useState(current);
  const { busy, error, run } = useAction();
  const submit = (event) => {
    event.preventDefault();
    run(async () => {
      await save(name.trim());
      onDone();
    });
  };
  return html`<form class="inline-form" onSubmit=${submit} aria-label=${ariaLabel}>
    <div class="field">
      <label for=${id}>New name for ${current}</label>
      <input id=${id} required value=${name} aria-describedby=${`${id}-count`}
        onInput=${(e) => setName(e.currentTarget.value)} />
      <${CharCount} id=${`${id}-count`} value=${name} />
    </div>
    <button type="submit" disabled=${busy || !name.trim() || nameTooLong(name)}>Save</button>
    <button type="button" onClick=${onDone}>Cancel</button>
    <${ErrorBox} error=${error} />
  </form>`;
}
