// Renders /openapi.json on /docs: routes grouped by tag, each with its parameters, example body
// and answers. Also the copy buttons of the robot examples. No framework, nothing fetched from
// another origin.
'use strict';

(() => {
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === 'class') el.className = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const AUTH = { bearer: 'Bearer JWT', session: 'session cookie', robotToken: 'robot Token' };

  // A schema's short name: a component's name, [Item] for arrays, or its JSON type(s).
  function schemaName(schema) {
    if (!schema) return '';
    if (schema.$ref) return schema.$ref.split('/').pop();
    if (schema.type === 'array' && schema.items) return `[${schemaName(schema.items)}]`;
    if (Array.isArray(schema.type)) return schema.type.join(' | ');
    if (schema.oneOf) return schema.oneOf.map(schemaName).join(' | ');
    if (schema.enum) return schema.enum.join(' | ');
    return schema.type || 'any JSON';
  }

  function mediaSchema(content) {
    const media = content ? Object.values(content)[0] : null;
    return media && media.schema ? schemaName(media.schema) : '';
  }

  function schemaSection(name, schema) {
    const required = new Set(schema.required || []);
    const props = Object.entries(schema.properties || {}).map(([prop, s]) => h('li', {},
      h('code', {}, prop), ` ${schemaName(s)}${required.has(prop) ? '' : ' (optional)'}`,
      s.description ? ` — ${s.description}` : ''));
    return h('details', { class: 'op', id: `schema-${name}` },
      h('summary', {}, h('span', { class: 'path' }, name),
        h('span', { class: 'muted' }, schema.description || (props.length ? '' : schemaName(schema)))),
      props.length ? h('ul', {}, props) : null);
  }

  function operation(method, path, op) {
    const auth = (op.security || []).flatMap((s) => Object.keys(s)).map((k) => AUTH[k] || k);
    const params = (op.parameters || []).map((p) => h('li', {},
      h('code', {}, p.name), ` (${p.in}, ${p.schema.type})`, p.description ? ` — ${p.description}` : ''));
    const content = op.requestBody ? op.requestBody.content : null;
    const body = content ? Object.entries(content).map(([type, media]) => h('div', {},
      h('p', { class: 'small' }, 'Body: ', h('code', {}, type),
        media.schema ? ` (${schemaName(media.schema)})` : ''),
      media.example !== undefined
        ? h('pre', {}, typeof media.example === 'string' ? media.example : JSON.stringify(media.example, null, 2))
        : null)) : [];
    const answers = Object.entries(op.responses || {}).map(([status, r]) => {
      const schema = mediaSchema(r.content);
      return h('li', {}, h('code', {}, status), ` ${r.description}`, schema ? ` (${schema})` : '');
    });
    return h('details', { class: 'op', id: op.operationId.replace(/[^a-z0-9]+/gi, '-') },
      h('summary', {}, h('span', { class: 'method' }, method), h('span', { class: 'path' }, path),
        h('span', { class: 'muted' }, op.summary)),
      h('p', { class: 'small' }, auth.length ? `Credentials: ${auth.join(' or ')}` : 'No credentials needed'),
      params.length ? h('div', {}, h('p', { class: 'small' }, 'Parameters:'), h('ul', {}, params)) : null,
      body,
      h('p', { class: 'small' }, 'Answers:'), h('ul', {}, answers));
  }

  async function render() {
    const target = document.getElementById('spec');
    try {
      const spec = await (await fetch('/openapi.json')).json();
      const byTag = new Map((spec.tags || []).map((t) => [t.name, []]));
      for (const [path, methods] of Object.entries(spec.paths)) {
        for (const [method, op] of Object.entries(methods)) {
          const tag = (op.tags || ['other'])[0];
          if (!byTag.has(tag)) byTag.set(tag, []);
          byTag.get(tag).push(operation(method, path, op));
        }
      }
      const tags = new Map((spec.tags || []).map((t) => [t.name, t.description]));
      const schemas = Object.entries((spec.components || {}).schemas || {})
        .map(([name, schema]) => schemaSection(name, schema));
      target.replaceChildren(...Array.from(byTag.entries()).filter(([, ops]) => ops.length).map(([tag, ops]) =>
        h('section', {}, h('h3', {}, tag), tags.get(tag) ? h('p', { class: 'muted' }, tags.get(tag)) : null, ops)),
      h('section', {}, h('h3', {}, 'schemas'),
        h('p', { class: 'muted' }, 'Request and answer bodies, derived from the types the node reads and writes'),
        schemas));
    } catch (err) {
      target.replaceChildren(h('p', { class: 'error' }, `Could not load /openapi.json: ${err.message}`));
    }
  }

  for (const button of document.querySelectorAll('button[data-copy]')) {
    button.addEventListener('click', async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = 'Copied';
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = 'Selected: press Ctrl+C';
      }
    });
  }
  render();
})();
