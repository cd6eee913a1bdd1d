// Orchestrator RPA dashboard. Plain JavaScript, no framework, no network access beyond this node.
// Pages are shells; this script fills them from the JSON user API (the session cookie
// authenticates, X-CSRF-Token carries the page's anti-forgery token on writes) and redraws on
// every server-sent `tick` from /events.
'use strict';

(() => {
  const body = document.body;
  const page = body.dataset.page;
  const isAdmin = body.dataset.role === 'admin';
  const userId = Number(body.dataset.userId);
  const username = body.dataset.username;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';
  const STATUSES = ['PENDING', 'ASSIGNED', 'STARTED', 'COMPLETED', 'FAILED', 'ABANDONED'];

  // ---- DOM and formatting helpers ------------------------------------------------------------

  /** Builds an element: h('a', {href: '/x', class: 'y'}, 'text', child). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'dataset') Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  const num = (n) => Number(n || 0).toLocaleString();
  const badge = (status) => h('span', { class: `badge s-${status}` }, status);

  function when(rfc) {
    if (!rfc) return '—';
    const d = new Date(rfc);
    return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  }
  function ago(rfc) {
    if (!rfc) return 'never';
    const s = Math.max(0, Math.round((Date.now() - Date.parse(rfc)) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return when(rfc);
  }
  function duration(seconds) {
    if (!isFinite(seconds)) return '—';
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  const done = (t) => t.counts.completed + t.counts.failed + t.counts.abandoned;
  const percent = (t) => (t.item_count > 0 ? Math.floor((100 * done(t)) / t.item_count) : 0);

  function progressBar(t) {
    const p = percent(t);
    const bar = h('div', { class: 'bar' });
    // Through the CSSOM: the content security policy refuses inline style attributes.
    bar.style.width = `${p}%`;
    return h('div', { class: 'progress-line' },
      h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
        'aria-valuenow': p, 'aria-label': `task ${t.id} progress` }, bar),
      h('span', { class: 'num' }, `${p}%`));
  }

  function showError(id, err) {
    const el = $(id);
    if (!el) return;
    if (!err) { el.hidden = true; el.textContent = ''; return; }
    el.textContent = err.message || String(err);
    el.hidden = false;
  }

  // ---- API --------------------------------------------------------------------------------------

  /** Calls the user API; resolves with the JSON answer, rejects with the server's message. */
  async function api(method, path, data) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
    if (data !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: data === undefined ? undefined : JSON.stringify(data),
    });
    if (response.status === 401) {
      window.location.assign('/login');
      throw new Error('signed out');
    }
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) {
      throw new Error((json && json.error && json.error.message) || `request failed (${response.status})`);
    }
    return json;
  }

  // ---- Live updates -----------------------------------------------------------------------------

  const tickListeners = [];
  const onTick = (fn) => tickListeners.push(fn);
  let lastTick = null;

  function connectEvents() {
    const status = $('live-status');
    const events = new EventSource('/events');
    // Close the stream when leaving the page: browsers allow only six connections per host, and
    // a stream kept by a page in the back/forward cache would hold one of them.
    window.addEventListener('pagehide', () => events.close());
    events.addEventListener('tick', (event) => {
      lastTick = JSON.parse(event.data);
      (lastTick.active_tasks || []).forEach(observeTask);
      if (status) { status.textContent = 'live'; status.classList.add('on'); }
      for (const fn of tickListeners) {
        try { fn(lastTick); } catch (err) { console.error(err); }
      }
    });
    // The server ends the stream when the session stops being valid: sign in again.
    events.addEventListener('ended', () => {
      events.close();
      window.location.assign('/login');
    });
    events.addEventListener('error', async () => {
      if (status) { status.textContent = 'reconnecting…'; status.classList.remove('on'); }
      // A session that expired makes the stream fail for good: go sign in again.
      const me = await fetch('/api/v1/auth/me', { credentials: 'same-origin' }).catch(() => null);
      if (me && me.status === 401) window.location.assign('/login');
    });
  }

  // Progress samples per task, for an ETA from the recent rate rather than the lifetime average.
  const samples = new Map();
  function observeTask(t) {
    const list = samples.get(t.id) || [];
    const now = Date.now();
    list.push({ t: now, done: done(t) });
    while (list.length > 2 && now - list[0].t > 120000) list.shift();
    samples.set(t.id, list);
  }
  /** Items per second: over the last two minutes when observed, else since the task started. */
  function rateOf(t) {
    const list = samples.get(t.id) || [];
    if (list.length >= 2) {
      const first = list[0];
      const last = list[list.length - 1];
      if (last.t - first.t >= 3000 && last.done > first.done) {
        return (last.done - first.done) / ((last.t - first.t) / 1000);
      }
    }
    if (t.started_at && done(t) > 0) {
      const elapsed = (Date.now() - Date.parse(t.started_at)) / 1000;
      if (elapsed > 0) return done(t) / elapsed;
    }
    return null;
  }
  function eta(t) {
    const remaining = t.item_count - done(t);
    if (remaining <= 0) return 'done';
    if (t.status === 'CANCELLED') return '—';
    const rate = rateOf(t);
    return rate ? duration(remaining / rate) : 'estimating…';
  }

  // ---- Shared lookups ---------------------------------------------------------------------------

  let processCache = null;
  async function processes() {
    if (!processCache) processCache = await api('GET', '/api/v1/processes');
    return processCache;
  }
  const processName = (list, id) => {
    const p = list.find((x) => x.id === id);
    return p ? p.title : `#${id}`;
  };
  let userCache = null;
  async function ownerNames() {
    if (!isAdmin) return new Map([[userId, username]]);
    if (!userCache) {
      const users = await api('GET', '/api/v1/users');
      userCache = new Map(users.map((u) => [u.id, u.username]));
    }
    return userCache;
  }

  function statusCounts(container, counts) {
    container.replaceChildren(...STATUSES.map((s) => h('div', { class: `status-count s-${s}` },
      h('span', { class: 'muted small' }, s.toLowerCase()),
      h('strong', { class: 'num', id: `count-${s.toLowerCase()}` }, num(counts[s.toLowerCase()])))));
  }

  function pager(container, offset, limit, total, go) {
    const first = total === 0 ? 0 : offset + 1;
    const last = Math.min(offset + limit, total);
    container.replaceChildren(
      h('button', { type: 'button', class: 'small', disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) }, '‹ Previous'),
      h('span', { class: 'muted' }, `${num(first)}–${num(last)} of ${num(total)}`),
      h('button', { type: 'button', class: 'small', disabled: last >= total, onclick: () => go(offset + limit) }, 'Next ›'));
  }

  // ---- Dashboard --------------------------------------------------------------------------------

  function dashboardPage() {
    onTick((data) => {
      const s = data.stats;
      $('stat-connected').textContent = num(s.robots.connected);
      $('stat-robots-total').textContent = `of ${num(s.robots.total)} robots`;
      $('stat-active').textContent = num(s.robots.active);
      $('stat-tasks').textContent = num(s.tasks.total);
      const running = (s.tasks.by_status.STARTED || 0) + (s.tasks.by_status.CREATED || 0);
      $('stat-tasks-running').textContent = `${num(running)} running`;
      const minutes = data.throughput.minutes;
      const recent = minutes.slice(-5).reduce((n, m) => n + m.completed + m.failed, 0);
      $('stat-rate').textContent = num(recent);
      statusCounts($('item-statuses'), s.items);
      drawChart($('chart'), minutes);
      drawActive($('active-tasks'), data.active_tasks);
    });
  }

  function drawChart(container, minutes) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = (tag, attrs, ...kids) => {
      const el = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      kids.forEach((k) => el.append(k));
      return el;
    };
    const W = 600; const H = 180; const left = 36; const bottom = 20;
    const max = Math.max(1, ...minutes.map((m) => m.completed + m.failed));
    const step = (W - left) / minutes.length;
    const y = (v) => (H - bottom) * (1 - v / max);
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
      'aria-label': `Items finished per minute over the last hour; peak ${max}` });
    chart.append(svg('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
    chart.append(svg('text', { x: 2, y: 10 }, String(max)));
    chart.append(svg('text', { x: 2, y: H - bottom }, '0'));
    chart.append(svg('text', { x: left, y: H - 4 }, '60 min ago'));
    chart.append(svg('text', { x: W - 30, y: H - 4 }, 'now'));
    minutes.forEach((m, i) => {
      const x = left + i * step + 1;
      const width = Math.max(1, step - 2);
      const title = `${new Date(m.minute).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}: ${m.completed} completed, ${m.failed} failed`;
      const g = svg('g', {}, svg('title', {}, title));
      if (m.completed > 0) {
        g.append(svg('rect', { class: 'bar-completed', x, width, y: y(m.completed + m.failed) + (H - bottom - y(m.failed)), height: H - bottom - y(m.completed) }));
      }
      if (m.failed > 0) {
        g.append(svg('rect', { class: 'bar-failed', x, width, y: y(m.completed + m.failed), height: H - bottom - y(m.failed) }));
      }
      chart.append(g);
    });
    container.replaceChildren(chart);
  }

  function drawActive(container, tasks) {
    if (!tasks.length) {
      container.replaceChildren(h('p', { class: 'muted' }, 'No task is running.'));
      return;
    }
    container.replaceChildren(h('div', { class: 'running' }, tasks.map((t) => h('div', { class: 'task-row' },
      h('div', { class: 'task-head' },
        h('a', { href: `/tasks/${t.id}` }, `Task ${t.id}${t.filename ? ` · ${t.filename}` : ''}`),
        h('span', {}, badge(t.status), ' ', h('span', { class: 'muted small' },
          `${num(done(t))} / ${num(t.item_count)} · ETA ${eta(t)}`))),
      progressBar(t)))));
  }

  // ---- Tasks ------------------------------------------------------------------------------------

  function tasksPage() {
    const form = $('task-filters');
    const state = { offset: 0, limit: 25 };
    let loading = false;
    processes().then((list) => {
      form.process_id.append(...list.map((p) => h('option', { value: p.id }, p.title)));
    }).catch(() => {});
    async function load() {
      if (loading) return;
      loading = true;
      try {
        const params = new URLSearchParams({ offset: state.offset, limit: state.limit });
        if (form.status.value) params.set('status', form.status.value);
        if (form.process_id.value) params.set('process_id', form.process_id.value);
        const [page, procs, owners] = await Promise.all([
          api('GET', `/api/v1/tasks?${params}`), processes(), ownerNames()]);
        page.tasks.forEach(observeTask);
        const rows = page.tasks.map((t) => h('tr', { dataset: { taskId: t.id } },
          h('td', { class: 'num' }, h('a', { href: `/tasks/${t.id}` }, t.id)),
          h('td', {}, h('a', { href: `/tasks/${t.id}` }, t.filename || `task ${t.id}`)),
          h('td', {}, processName(procs, t.process_id)),
          h('td', {}, owners.get(t.owner_id) || `#${t.owner_id}`),
          h('td', {}, badge(t.status)),
          h('td', {}, progressBar(t)),
          h('td', { class: 'num' }, `${num(done(t))} / ${num(t.item_count)}`),
          h('td', {}, when(t.created_at))));
        const tbody = $('tasks-table').tBodies[0];
        tbody.replaceChildren(...(rows.length ? rows
          : [h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No tasks yet. Upload a CSV to start one.'))]));
        pager($('tasks-pager'), state.offset, state.limit, page.total, (offset) => { state.offset = offset; load(); });
      } finally {
        loading = false;
      }
    }
    form.addEventListener('change', () => { state.offset = 0; load(); });
    onTick(() => load());
    load();
  }

  // ---- New task ---------------------------------------------------------------------------------

  function newTaskPage() {
    const form = $('upload-form');
    processes().then((list) => {
      const enabled = list.filter((p) => p.enabled);
      form.process_id.replaceChildren(...enabled.map((p) => h('option', { value: p.id }, p.title)));
      if (!enabled.length) {
        showError('upload-error', new Error('No process is enabled. An admin creates processes on the Processes page.'));
        $('upload-button').disabled = true;
      }
    }).catch((err) => showError('upload-error', err));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      showError('upload-error', null);
      const file = form.file.files[0];
      if (!file) return;
      const data = new FormData();
      data.append('process_id', form.process_id.value);
      data.append('file', file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/v1/tasks');
      xhr.setRequestHeader('X-CSRF-Token', csrf);
      xhr.setRequestHeader('Accept', 'application/json');
      const bar = $('upload-bar');
      const label = $('upload-percent');
      $('upload-progress').hidden = false;
      $('upload-button').disabled = true;
      xhr.upload.addEventListener('progress', (e) => {
        if (!e.lengthComputable) return;
        const p = Math.floor((100 * e.loaded) / e.total);
        bar.value = p;
        label.textContent = p < 100 ? `${p}%` : 'stored, checking rows…';
      });
      xhr.addEventListener('load', () => {
        $('upload-button').disabled = false;
        let answer = null;
        try { answer = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status === 201 && answer) {
          window.location.assign(`/tasks/${answer.id}`);
          return;
        }
        if (xhr.status === 401) { window.location.assign('/login'); return; }
        $('upload-progress').hidden = true;
        const message = answer && answer.error ? answer.error.message : `upload failed (${xhr.status})`;
        showError('upload-error', new Error(`The file was refused: ${message}. Nothing was stored.`));
      });
      xhr.addEventListener('error', () => {
        $('upload-button').disabled = false;
        $('upload-progress').hidden = true;
        showError('upload-error', new Error('The upload was interrupted. Nothing was stored.'));
      });
      xhr.send(data);
    });
  }

  // ---- Task -------------------------------------------------------------------------------------

  function taskPage() {
    const id = Number(body.dataset.taskId);
    const filters = $('item-filters');
    const items = { offset: 0, limit: 50 };
    let task = null;
    let robotNames = new Map();
    $('download-results').href = `/api/v1/tasks/${id}/results.csv`;

    async function loadTask() {
      const [t, procs] = await Promise.all([api('GET', `/api/v1/tasks/${id}`), processes()]);
      observeTask(t);
      const changed = !task || done(task) !== done(t) || task.status !== t.status;
      task = t;
      $('task-title').textContent = `Task ${t.id}${t.filename ? ` · ${t.filename}` : ''}`;
      const p = percent(t);
      $('task-bar').style.width = `${p}%`;
      $('task-progress').setAttribute('aria-valuenow', p);
      $('task-percent').textContent = `${p}%`;
      const rate = rateOf(t);
      const facts = [
        ['Status', badge(t.status)], ['Process', processName(procs, t.process_id)],
        ['Items', num(t.item_count)], ['Finished', `${num(done(t))} (${p}%)`],
        ['Rate', rate ? `${rate.toFixed(1)} items/s` : '—'], ['ETA', eta(t)],
        ['Created', when(t.created_at)], ['Started', when(t.started_at)], ['Ended', when(t.ended_at)],
      ];
      $('task-facts').replaceChildren(...facts.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', { id: `fact-${k.toLowerCase()}` }, v))));
      statusCounts($('task-counts'), t.counts);
      $('cancel-task').disabled = !['CREATED', 'STARTED'].includes(t.status);
      $('retry-failed').disabled = t.status === 'CANCELLED' || t.counts.failed + t.counts.abandoned === 0;
      return changed;
    }

    async function loadItems() {
      const params = new URLSearchParams({ offset: items.offset, limit: items.limit });
      if (filters.status.value) params.set('status', filters.status.value);
      const list = await api('GET', `/api/v1/tasks/${id}/items?${params}`);
      if (list.items.some((i) => i.robot_id && !robotNames.has(i.robot_id))) {
        const robots = await api('GET', '/api/v1/robots');
        robotNames = new Map(robots.map((r) => [r.id, r.name]));
      }
      const columns = task.columns || [];
      const rows = list.items.map((i) => h('tr', {},
        h('td', { class: 'num' }, i.id), h('td', { class: 'num' }, i.line),
        h('td', {}, h('div', { class: 'values' }, columns.map((k) => `${k}=${i.values[k] ?? ''}`).join(' · '))),
        h('td', {}, badge(i.status)),
        h('td', {}, i.robot_id ? (robotNames.get(i.robot_id) || `#${i.robot_id}`) : '—'),
        h('td', { class: 'num' }, i.attempt),
        h('td', {}, i.observation || (i.fail_kind ? `(${i.fail_kind})` : '')),
        h('td', {}, when(i.ended_at))));
      $('items-table').tBodies[0].replaceChildren(...(rows.length ? rows
        : [h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No items match.'))]));
      const total = list.total ?? (filters.status.value
        ? task.counts[filters.status.value.toLowerCase()] : task.item_count);
      pager($('items-pager'), items.offset, items.limit, total, (offset) => { items.offset = offset; loadItems(); });
    }

    async function refresh() {
      try {
        const changed = await loadTask();
        if (changed) await loadItems();
        showError('task-error', null);
      } catch (err) {
        showError('task-error', err);
      }
    }

    async function act(button, path, confirmText, describe) {
      if (confirmText && !window.confirm(confirmText)) return;
      button.disabled = true;
      try {
        const answer = await api('POST', path);
        const notice = $('task-notice');
        notice.textContent = describe(answer);
        notice.hidden = false;
        task = null;
        await refresh();
      } catch (err) {
        showError('task-error', err);
        button.disabled = false;
      }
    }
    $('cancel-task').addEventListener('click', (e) => act(e.currentTarget, `/api/v1/tasks/${id}/cancel`,
      'Cancel this task? Items not yet finished will not run.', () => 'The task was cancelled.'));
    $('retry-failed').addEventListener('click', (e) => act(e.currentTarget, `/api/v1/tasks/${id}/retry-failed`,
      null, (a) => `${num(a.reopened)} items went back to PENDING.`));
    filters.addEventListener('change', () => { items.offset = 0; loadItems().catch((err) => showError('task-error', err)); });
    onTick(() => { if (!task || ['CREATED', 'STARTED'].includes(task.status)) refresh(); });
    refresh();
  }

  // ---- Robots -----------------------------------------------------------------------------------

  function robotsPage() {
    const form = $('robot-form');
    let shown = '';
    let procs = [];

    function processSelect(selected, attrs) {
      return h('select', Object.assign({ multiple: true, size: 2 }, attrs),
        procs.map((p) => h('option', { value: p.id, selected: selected.includes(p.id) }, p.title)));
    }
    const selectedIds = (select) => Array.from(select.selectedOptions).map((o) => Number(o.value));

    async function change(robot, patch, button) {
      if (button) button.disabled = true;
      try {
        await api('PATCH', `/api/v1/robots/${robot.id}`, patch);
        showError('robot-error', null);
        await load(true);
      } catch (err) {
        showError('robot-error', err);
      } finally {
        if (button) button.disabled = false;
      }
    }

    function showToken(robot) {
      $('token-robot').textContent = robot.name;
      $('token-value').textContent = robot.token;
      $('token-box').hidden = false;
      $('copy-token').focus();
    }

    function row(r) {
      const live = (name, content) => h('td', { class: `live-${name}` }, content);
      const cells = [
        h('td', { class: 'num' }, r.id), h('td', {}, r.name), h('td', {}, r.platform),
        live('status', badge(r.status)),
        live('connected', r.connected ? 'yes' : 'no'),
        live('load', `${num(r.load)} / ${num(r.capacity)}`),
        live('pulse', ago(r.last_pulse_at)),
        h('td', {}, r.processes.length ? r.processes.map((id) => processName(procs, id)).join(', ') : 'all'),
      ];
      if (isAdmin) {
        const capacity = h('input', { type: 'number', min: 1, max: 1000, value: r.capacity, 'aria-label': `capacity of ${r.name}` });
        const select = processSelect(r.processes, { 'aria-label': `processes of ${r.name}` });
        cells.push(h('td', {}, h('div', { class: 'row-actions' },
          capacity, select,
          h('button', { type: 'button', class: 'small', onclick: (e) => change(r, { capacity: Number(capacity.value), processes: selectedIds(select) }, e.currentTarget) }, 'Save'),
          h('button', { type: 'button', class: 'small', onclick: (e) => change(r, { status: r.status === 'ACTIVE' ? 'INACTIVE' : 'ACTIVE' }, e.currentTarget) },
            r.status === 'ACTIVE' ? 'Deactivate' : 'Activate'),
          h('button', { type: 'button', class: 'small', onclick: async () => {
            if (!window.confirm(`Rotate the token of ${r.name}? The current token stops working at once.`)) return;
            try { showToken(await api('POST', `/api/v1/robots/${r.id}/token`)); } catch (err) { showError('robot-error', err); }
          } }, 'Rotate token'),
          h('button', { type: 'button', class: 'small danger', onclick: async () => {
            if (!window.confirm(`Delete robot ${r.name}? Its leased items go back to the queue.`)) return;
            try { await api('DELETE', `/api/v1/robots/${r.id}`); await load(true); } catch (err) { showError('robot-error', err); }
          } }, 'Delete'))));
      }
      return h('tr', { dataset: { robotId: r.id } }, cells);
    }

    async function load(force) {
      const robots = await api('GET', '/api/v1/robots');
      const tbody = $('robots-table').tBodies[0];
      const key = robots.map((r) => `${r.id}:${r.status}:${r.capacity}:${r.processes}`).join(',');
      const editing = tbody.contains(document.activeElement);
      if (force || (key !== shown && !editing)) {
        shown = key;
        tbody.replaceChildren(...(robots.length ? robots.map(row)
          : [h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'No robots yet.'))]));
        return;
      }
      // Only the live cells change, so an admin's half-typed edit survives the refresh.
      for (const r of robots) {
        const tr = tbody.querySelector(`tr[data-robot-id="${r.id}"]`);
        if (!tr) continue;
        tr.querySelector('.live-status').replaceChildren(badge(r.status));
        tr.querySelector('.live-connected').textContent = r.connected ? 'yes' : 'no';
        tr.querySelector('.live-load').textContent = `${num(r.load)} / ${num(r.capacity)}`;
        tr.querySelector('.live-pulse').textContent = ago(r.last_pulse_at);
      }
    }

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      showError('robot-error', null);
      try {
        const robot = await api('POST', '/api/v1/robots', {
          name: form.name.value.trim(), platform: form.platform.value,
          capacity: Number(form.capacity.value), processes: selectedIds(form.processes),
        });
        form.reset();
        showToken(robot);
        await load(true);
      } catch (err) {
        showError('robot-error', err);
      }
    });
    $('copy-token').addEventListener('click', async () => {
      const text = $('token-value').textContent;
      try {
        await navigator.clipboard.writeText(text);
        $('copy-token').textContent = 'Copied';
      } catch (_) {
        // Clipboard access needs a secure context; select the token for a manual copy instead.
        const range = document.createRange();
        range.selectNodeContents($('token-value'));
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        $('copy-token').textContent = 'Selected: press Ctrl+C';
      }
    });
    processes().then((list) => {
      procs = list;
      if (form) form.processes.replaceChildren(...list.map((p) => h('option', { value: p.id }, p.title)));
      return load(true);
    }).catch((err) => showError('robot-error', err));
    onTick(() => load(false).catch((err) => showError('robot-error', err)));
  }

  // ---- Processes --------------------------------------------------------------------------------

  function processesPage() {
    const form = $('process-form');
    async function load() {
      processCache = null;
      const list = await processes();
      $('processes-table').tBodies[0].replaceChildren(...(list.length ? list.map((p) => {
        const description = h('input', { value: p.description || '', 'aria-label': `description of ${p.title}` });
        return h('tr', {},
          h('td', { class: 'num' }, p.id), h('td', {}, p.title), h('td', {}, description),
          h('td', { class: 'num' }, p.max_attempts), h('td', {}, p.on_lost),
          h('td', {}, p.enabled ? 'yes' : 'no'),
          h('td', {}, h('div', { class: 'row-actions' },
            h('button', { type: 'button', class: 'small', onclick: () => patch(p, { description: description.value }) }, 'Save'),
            h('button', { type: 'button', class: 'small', onclick: () => patch(p, { enabled: !p.enabled }) },
              p.enabled ? 'Disable' : 'Enable'))));
      }) : [h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No processes yet.'))]));
    }
    async function patch(p, change) {
      try { await api('PATCH', `/api/v1/processes/${p.id}`, change); showError('process-error', null); await load(); } catch (err) { showError('process-error', err); }
    }
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        await api('POST', '/api/v1/processes', {
          title: form.title.value.trim(), description: form.description.value,
          max_attempts: Number(form.max_attempts.value), on_lost: form.on_lost.value,
        });
        form.reset();
        showError('process-error', null);
        await load();
      } catch (err) {
        showError('process-error', err);
      }
    });
    load().catch((err) => showError('process-error', err));
  }

  // ---- Users ------------------------------------------------------------------------------------

  function usersPage() {
    const form = $('user-form');
    async function load() {
      const users = await api('GET', '/api/v1/users');
      $('users-table').tBodies[0].replaceChildren(...users.map((u) => h('tr', {},
        h('td', { class: 'num' }, u.id), h('td', {}, u.username), h('td', {}, u.role),
        h('td', {}, u.disabled ? badge('INACTIVE') : badge('ACTIVE')), h('td', {}, when(u.created_at)),
        h('td', {}, u.id === userId ? h('span', { class: 'muted small' }, 'you') : h('div', { class: 'row-actions' },
          h('button', { type: 'button', class: 'small', onclick: () => patch(u, { disabled: !u.disabled }) }, u.disabled ? 'Enable' : 'Disable'),
          h('button', { type: 'button', class: 'small', onclick: () => patch(u, { role: u.role === 'admin' ? 'operator' : 'admin' }) },
            u.role === 'admin' ? 'Make operator' : 'Make admin'))))));
    }
    async function patch(u, change) {
      try { await api('PATCH', `/api/v1/users/${u.id}`, change); showError('user-error', null); await load(); } catch (err) { showError('user-error', err); }
    }
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        await api('POST', '/api/v1/users', { username: form.username.value.trim(), password: form.password.value, role: form.role.value });
        form.reset();
        showError('user-error', null);
        await load();
      } catch (err) {
        showError('user-error', err);
      }
    });
    load().catch((err) => showError('user-error', err));
  }

  // ---- Cluster ----------------------------------------------------------------------------------

  function clusterPage() {
    async function load() {
      const view = await api('GET', '/api/v1/cluster');
      const alive = view.nodes.filter((n) => n.alive).length;
      $('cluster-summary').textContent = `${alive} of ${view.nodes.length} nodes alive; ` +
        `housekeeping on ${view.housekeeping || 'no node'}; this page is served by ${view.this_node}; ` +
        `a node without a heartbeat for ${view.dead_after_ms / 1000} s is dead.`;
      $('nodes-table').tBodies[0].replaceChildren(...view.nodes.map((n) => h('tr', {},
        h('td', {}, n.id === view.this_node ? `${n.id} (this node)` : n.id),
        h('td', {}, n.http), h('td', {}, n.cluster || '—'),
        h('td', { class: 'num' }, n.incarnation), h('td', {}, ago(n.heartbeat_at)),
        h('td', {}, badge(n.alive ? 'ALIVE' : 'DEAD')),
        h('td', { class: 'num' }, n.robots), h('td', { class: 'num' }, n.free_slots),
        h('td', { class: 'num' }, n.leased_per_minute))));
      const hints = view.hints;
      $('hints-summary').textContent = hints.enabled
        ? `Hints: connected to ${hints.peers.length ? hints.peers.join(', ') : 'no other node'}; ` +
          `${hints.sent} sent, ${hints.received} received, ${hints.lost} lost (the store carries every change anyway).`
        : 'Hints: off on this node (no cluster cookie); nodes learn of each other\'s changes from the store.';
      showError('cluster-error', null);
    }
    onTick(() => load().catch((err) => showError('cluster-error', err)));
    load().catch((err) => showError('cluster-error', err));
  }

  const pages = {
    dashboard: dashboardPage, tasks: tasksPage, 'new-task': newTaskPage, task: taskPage,
    robots: robotsPage, processes: processesPage, users: usersPage, cluster: clusterPage,
  };
  if (pages[page]) {
    pages[page]();
    connectEvents();
  }
})();
