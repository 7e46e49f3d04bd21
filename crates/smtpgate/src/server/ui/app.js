// The smtpgate dashboard: one page, built into the binary, that reads and steers the gate through
// its admin API (/api/v1) with the admin token. Nothing is fetched from anywhere else, nothing is
// written into the page as HTML: every value goes in as text (textContent), so mail data (a
// subject, an address, a reply) cannot run script here. The token stays in this tab's
// sessionStorage and is sent only as the Authorization header of API calls.
'use strict';

const TOKEN_KEY = 'smtpgate-token';

// ---- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function call(method, path, body) {
  const headers = { Authorization: 'Bearer ' + sessionStorage.getItem(TOKEN_KEY) };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* plain text answer */ }
  if (response.status === 401) { signOut(); throw new ApiError(401, 'the token was refused'); }
  if (!response.ok) {
    const message = (data && data.error) || (typeof data === 'string' ? data.trim() : '') || response.statusText;
    throw new ApiError(response.status, message);
  }
  return data;
}

const get = (path) => call('GET', path);
const post = (path, body) => call('POST', path, body);

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

// ---- DOM helpers ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children.flat()) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const view = () => document.getElementById('view');

function show(...nodes) { view().replaceChildren(...nodes); }

function status(text, isError) {
  return el('p', { class: isError ? 'status error' : 'status', role: 'status' }, text || '');
}

const fmt = {
  num: (n) => (n === undefined || n === null ? '' : Number(n).toLocaleString('en-US')),
  pct: (r) => (r === undefined || r === null || Number.isNaN(r) ? '-' : (100 * r).toFixed(1) + '%'),
  ms: (n) => (n === undefined || n === null ? '-' : Math.round(n) + ' ms'),
  age: (secs) => {
    if (secs === undefined || secs === null) return '';
    const s = Math.max(0, Math.round(secs));
    if (s < 120) return s + 's';
    if (s < 7200) return Math.round(s / 60) + 'm';
    if (s < 172800) return Math.round(s / 3600) + 'h';
    return Math.round(s / 86400) + 'd';
  },
  time: (t) => {
    if (t === undefined || t === null || t === '') return '';
    const ms = typeof t === 'number' ? (t > 1e12 ? t : t * 1000) : Date.parse(t);
    return Number.isNaN(ms) ? String(t) : new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
  },
  list: (v) => (Array.isArray(v) ? v.join(', ') : v === undefined || v === null ? '' : String(v)),
};

// A sortable table: `columns` are {key, label, num, get (row -> value), show (value -> text)}.
function table(rows, columns, actions) {
  let sortKey = null;
  let ascending = true;
  const tbody = el('tbody');
  const value = (row, c) => (c.get ? c.get(row) : row[c.key]);
  const render = () => {
    const sorted = [...rows];
    if (sortKey) {
      const c = columns.find((x) => x.key === sortKey);
      sorted.sort((a, b) => {
        const x = value(a, c), y = value(b, c);
        const r = typeof x === 'number' && typeof y === 'number' ? x - y : String(x ?? '').localeCompare(String(y ?? ''));
        return ascending ? r : -r;
      });
    }
    tbody.replaceChildren(...sorted.map((row) => el('tr', {},
      columns.map((c) => el('td', { class: c.num ? 'num' : null, 'data-key': c.key },
        (c.show || ((v) => (c.num ? fmt.num(v) : fmt.list(v))))(value(row, c)))),
      actions ? el('td', {}, actions(row)) : null)));
  };
  const head = el('tr', {}, columns.map((c) => el('th', {
    class: c.num ? 'num' : null,
    onclick: () => { ascending = sortKey === c.key ? !ascending : false; sortKey = c.key; render(); },
  }, c.label)), actions ? el('th', {}, '') : null);
  render();
  if (!rows.length) tbody.append(el('tr', {}, el('td', { colspan: columns.length + (actions ? 1 : 0) }, 'Nothing here.')));
  return el('table', {}, el('thead', {}, head), tbody);
}

function card(label, value, id) {
  return el('div', { class: 'card', id }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value));
}

// A line chart of `series` (objects with `at`) for each of `lines` ({key, label, color}).
function chart(series, lines) {
  const w = 800, h = 180, pad = 28;
  const max = Math.max(1, ...series.flatMap((p) => lines.map((l) => Number(p[l.key]) || 0)));
  const x = (i) => pad + (series.length < 2 ? 0 : (i * (w - 2 * pad)) / (series.length - 1));
  const y = (v) => h - pad - ((h - 2 * pad) * v) / max;
  const paths = lines.map((l) => svg('polyline', {
    fill: 'none', stroke: l.color, 'stroke-width': 2,
    points: series.map((p, i) => x(i) + ',' + y(Number(p[l.key]) || 0)).join(' '),
  }));
  // A mark on every point, so that a minute alone (no line yet) still shows.
  const marks = lines.flatMap((l) => series.map((p, i) => svg('circle', { cx: x(i), cy: y(Number(p[l.key]) || 0), r: 3, fill: l.color })));
  const chartNode = svg('svg', { class: 'chart', viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none', role: 'img' },
    svg('line', { class: 'axis', x1: pad, y1: h - pad, x2: w - pad, y2: h - pad }),
    svg('text', { x: 2, y: pad }, String(max)), svg('text', { x: 2, y: h - pad }, '0'),
    series.length ? svg('text', { x: pad, y: h - 8 }, fmt.time(series[0].at)) : null,
    series.length ? svg('text', { x: w - pad - 120, y: h - 8 }, fmt.time(series[series.length - 1].at)) : null,
    paths, marks);
  const legend = el('div', { class: 'legend' }, lines.map((l) => el('span', {}, svg('svg', { width: 10, height: 10 }, svg('rect', { width: 10, height: 10, fill: l.color })), ' ', l.label)));
  return el('div', {}, chartNode, legend);
}

// ---- What the API answers, read in one place ---------------------------------------------------

const shape = {
  // GET /api/v1/stats: {series: [{at, ...counts}], totals: {...counts, delivery_rate, bounce_rate,
  // deferral_rate, latency}, by: [{value, ...counts, rates, latency}]}.
  series: (s) => ((s && s.series) || []).map((p) => ({ ...p, at: p.at ?? p.start })),
  totals: (s) => (s && (s.totals || s.total)) || {},
  rows: (s) => (s && (s.values || s.rows)) || [],
  bounced: (c) => (typeof c.bounced === 'object' && c.bounced !== null
    ? Object.values(c.bounced).reduce((a, b) => a + b, 0) : Number(c.bounced) || 0),
  categories: (c) => (typeof c.bounced === 'object' && c.bounced !== null ? c.bounced : (c.bounced_by || {})),
  // GET /api/v1/queue: {messages: [...], total} or a plain list.
  messages: (q) => (Array.isArray(q) ? q : (q && (q.messages || q.items)) || []),
  // GET /api/v1/messages: {events: [...]} or a plain list.
  events: (r) => (Array.isArray(r) ? r : (r && (r.events || r.items)) || []),
  list: (r) => (Array.isArray(r) ? r : (r && (r.entries || r.items || r.throttles || r.pools)) || []),
};

const rate = (num, den) => (den > 0 ? num / den : null);

// ---- Pages --------------------------------------------------------------------------------------

const pages = {
  async overview(params, put) {
    const [stats, queue] = await Promise.all([get('/api/v1/stats' + query({ since: '1h', bucket: 'minute' })), get('/api/v1/queue' + query({ limit: 1 }))]);
    const t = shape.totals(stats);
    const bounced = shape.bounced(t);
    const depth = queue.total ?? shape.messages(queue).length;
    const series = shape.series(stats).map((p) => ({ ...p, bounced: shape.bounced(p) }));
    put(el('h2', {}, 'The last hour'),
      el('div', { class: 'cards' },
        card('Received', fmt.num(t.received || 0), 'card-received'),
        card('Delivered', fmt.num(t.delivered || 0), 'card-delivered'),
        card('Deferred', fmt.num(t.deferred || 0), 'card-deferred'),
        card('Bounced', fmt.num(bounced), 'card-bounced'),
        card('In the queue', fmt.num(depth), 'card-queue'),
        card('Delivery rate', fmt.pct(t.delivery_rate ?? rate(t.delivered || 0, (t.delivered || 0) + bounced)), 'card-delivery-rate'),
        card('Bounce rate', fmt.pct(t.bounce_rate ?? rate(bounced, (t.delivered || 0) + bounced)), 'card-bounce-rate')),
      el('div', { class: 'panel' }, el('h2', {}, 'Messages per minute'),
        chart(series, [
          { key: 'received', label: 'in', color: '#2459c7' },
          { key: 'delivered', label: 'out', color: '#067647' },
          { key: 'deferred', label: 'deferred', color: '#b54708' },
          { key: 'bounced', label: 'bounced', color: '#b42318' },
        ])));
  },

  async queue(params, put) {
    const filters = { domain: '', sender: '', recipient: '', state: '', older_than: '', ...params };
    const out = status(takeFlash());
    const inputs = {};
    const field = (name, label, node) => { inputs[name] = node; node.value = filters[name] || ''; return el('label', {}, label + ' ', node); };
    const form = el('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); go('queue', read()); } },
      field('domain', 'Domain', el('input', { name: 'domain', size: 16 })),
      field('sender', 'Sender', el('input', { name: 'sender', size: 18 })),
      field('recipient', 'Recipient', el('input', { name: 'recipient', size: 18 })),
      field('state', 'State', el('select', { name: 'state' }, ['', 'queued', 'deferred', 'held'].map((s) => el('option', { value: s }, s || 'any')))),
      field('older_than', 'Older than', el('input', { name: 'older_than', size: 5, placeholder: '1h' })),
      el('button', { type: 'submit', class: 'primary' }, 'Search'));
    const read = () => Object.fromEntries(Object.entries(inputs).map(([k, n]) => [k, n.value.trim()]));
    const act = async (path, what) => {
      try { const r = await post(path); flash = what + ': ' + summary(r); await route(); }
      catch (e) { out.textContent = e.message; out.classList.add('error'); }
    };
    const answer = await get('/api/v1/queue' + query({ ...filters, limit: 500 }));
    const rows = shape.messages(answer);
    const selected = Object.values(filters).some((v) => v);
    const bulk = selected ? el('div', { class: 'filters' }, 'All that match: ',
      ['retry', 'hold', 'release'].map((a) => el('button', { type: 'button', 'data-bulk': a, onclick: () => act('/api/v1/queue/' + a + query(filters), a) }, a))) : null;
    put(el('h2', {}, 'Queue'), form, bulk, out,
      el('div', { class: 'panel' }, table(rows, [
        { key: 'id', label: 'Queue id', get: (m) => m.id || m.queue_id, show: (v) => el('code', {}, v) },
        { key: 'age', label: 'Age', num: true, get: (m) => m.age_secs ?? m.age, show: fmt.age },
        { key: 'size', label: 'Size', num: true },
        { key: 'sender', label: 'Sender' },
        { key: 'recipients', label: 'Pending recipients', get: (m) => pendingRecipients(m) },
        { key: 'state', label: 'State' },
        { key: 'next_attempt', label: 'Next attempt', show: fmt.time },
        { key: 'last_reply', label: 'Last reply', get: (m) => replyText(m.last_reply) },
      ], (m) => ['retry', 'hold', 'release', 'bounce', 'delete'].map((a) => el('button', {
        type: 'button', class: a === 'delete' || a === 'bounce' ? 'danger' : null, 'data-action': a,
        onclick: () => {
          if ((a === 'delete' || a === 'bounce') && !confirm(a + ' ' + (m.id || m.queue_id) + '?')) return;
          act('/api/v1/queue/' + encodeURIComponent(m.id || m.queue_id) + '/' + a, a);
        },
      }, a)))));
  },

  async history(params, put) {
    const q = (params && params.q) || '';
    const since = (params && params.since) || '24h';
    const input = el('input', { name: 'q', size: 40, placeholder: 'queue id, Message-ID or address', value: q });
    const sinceInput = el('input', { name: 'since', size: 5, value: since });
    const form = el('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); go('history', { q: input.value.trim(), since: sinceInput.value.trim() }); } },
      el('label', {}, 'Find ', input), el('label', {}, 'Since ', sinceInput), el('button', { type: 'submit', class: 'primary' }, 'Search'));
    if (!q) { put(el('h2', {}, 'Message history'), form); return; }
    const events = shape.events(await get('/api/v1/messages' + query({ q, since })));
    const ordered = [...events].sort((a, b) => (Number(a.at) || 0) - (Number(b.at) || 0));
    put(el('h2', {}, 'Message history'), form,
      el('div', { class: 'panel' }, el('h2', {}, ordered.length + ' events for ' + q),
        el('ol', { class: 'timeline' }, ordered.map((e) => el('li', { 'data-type': e.type },
          el('span', { class: 'mono' }, fmt.time(e.at)), ' ',
          el('span', { class: 'type' }, e.type), ' ',
          el('code', {}, e.queue_id || ''), ' ',
          fmt.list(e.recipient || e.recipients), ' ',
          replyText(e.reply), e.server ? ' via ' + e.server : '',
          e.category ? ' (' + e.category + ')' : '')))));
  },

  async domains(params, put) {
    const stats = await get('/api/v1/stats' + query({ by: 'domain', since: '24h' }));
    put(el('h2', {}, 'Recipient domains, last 24 hours'), el('div', { class: 'panel' }, table(shape.rows(stats).map(withRates), rateColumns('Domain'))));
  },

  async bounces(params, put) {
    const stats = await get('/api/v1/stats' + query({ since: '24h' }));
    const categories = Object.entries(shape.categories(shape.totals(stats))).map(([category, count]) => ({ category, count }));
    put(el('h2', {}, 'Bounces by category, last 24 hours'), el('div', { class: 'panel' }, table(categories, [
      { key: 'category', label: 'Category' }, { key: 'count', label: 'Bounced', num: true }])));
  },

  async pools(params, put) {
    const pools = shape.list(await get('/api/v1/pools'));
    const rows = pools.flatMap((p) => (p.servers || []).map((s) => ({ pool: p.name, ...s })));
    put(el('h2', {}, 'Pools and their servers'), el('div', { class: 'panel' }, table(rows, [
      { key: 'pool', label: 'Pool' }, { key: 'server', label: 'Server' },
      { key: 'up', label: 'Health', show: (v) => (v ? 'up' : 'down') },
      { key: 'circuit_open', label: 'Circuit', show: (v) => (v ? 'open' : 'closed') },
      { key: 'open', label: 'Open connections', num: true }, { key: 'ok', label: 'Delivered', num: true },
      { key: 'failed', label: 'Failed', num: true }])));
  },

  async throttles(params, put) {
    const [throttles, sources] = await Promise.all([get('/api/v1/throttles'), get('/api/v1/sources')]);
    put(el('h2', {}, 'Adaptive throttles'), el('div', { class: 'panel' }, generic(shape.list(throttles))),
      el('h2', {}, 'Streams and their source addresses'), el('div', { class: 'panel' }, generic(shape.list(sources))));
  },

  async quarantine(params, put) {
    const out = status(takeFlash());
    const entries = shape.list(await get('/api/v1/quarantine'));
    put(el('h2', {}, 'Quarantine'), out, el('div', { class: 'panel' }, table(entries, [
      { key: 'id', label: 'Id', show: (v) => el('code', {}, v) }, { key: 'quarantined_at', label: 'When', show: fmt.time },
      { key: 'filter', label: 'Filter' }, { key: 'reason', label: 'Reason' }, { key: 'sender', label: 'Sender' },
      { key: 'recipients', label: 'Recipients' }, { key: 'size', label: 'Size', num: true },
    ], (q) => [el('button', { type: 'button', 'data-action': 'release', onclick: async () => {
      try { const r = await post('/api/v1/quarantine/' + encodeURIComponent(q.id) + '/release'); flash = summary(r); await route(); }
      catch (e) { out.textContent = e.message; out.classList.add('error'); }
    } }, 'release')])));
  },

  async suppression(params, put) {
    const out = status(takeFlash());
    const entries = shape.list(await get('/api/v1/suppression'));
    const address = el('input', { name: 'address', size: 30, placeholder: 'address' });
    const add = el('form', { class: 'filters', onsubmit: async (e) => {
      e.preventDefault();
      try { await call('PUT', '/api/v1/suppression/' + encodeURIComponent(address.value.trim())); await route(); }
      catch (err) { out.textContent = err.message; out.classList.add('error'); }
    } }, address, el('button', { type: 'submit' }, 'Suppress'));
    put(el('h2', {}, 'Suppression list'), add, out, el('div', { class: 'panel' }, table(entries, [
      { key: 'address', label: 'Address' }, { key: 'reason', label: 'Reason' }, { key: 'source', label: 'Source' },
      { key: 'added', label: 'Added', get: (s) => s.added ?? s.at, show: fmt.time },
    ], (s) => [el('button', { type: 'button', class: 'danger', onclick: async () => {
      try { await call('DELETE', '/api/v1/suppression/' + encodeURIComponent(s.address)); await route(); }
      catch (e) { out.textContent = e.message; out.classList.add('error'); }
    } }, 'remove')])));
  },
};

function withRates(r) {
  const bounced = shape.bounced(r);
  const delivered = r.delivered || 0;
  return {
    ...r, bounced, value: r.value ?? r.key ?? r.name,
    delivery_rate: r.delivery_rate ?? rate(delivered, delivered + bounced),
    bounce_rate: r.bounce_rate ?? rate(bounced, delivered + bounced),
    p50: r.p50 ?? (r.latency_ms && r.latency_ms.p50),
    p90: r.p90 ?? (r.latency_ms && r.latency_ms.p90),
  };
}

function rateColumns(label) {
  return [
    { key: 'value', label }, { key: 'received', label: 'Received', num: true }, { key: 'delivered', label: 'Delivered', num: true },
    { key: 'deferred', label: 'Deferred', num: true }, { key: 'bounced', label: 'Bounced', num: true },
    { key: 'delivery_rate', label: 'Delivery rate', num: true, show: fmt.pct }, { key: 'bounce_rate', label: 'Bounce rate', num: true, show: fmt.pct },
    { key: 'p50', label: 'p50', num: true, show: fmt.ms }, { key: 'p90', label: 'p90', num: true, show: fmt.ms },
  ];
}

// Any list of flat objects as a table with a column per key.
function generic(rows) {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return table(rows, keys.map((k) => ({ key: k, label: k, show: (v) => (typeof v === 'object' && v !== null && !Array.isArray(v) ? JSON.stringify(v) : fmt.list(v)) })));
}

// The addresses still to be delivered (`recipients` with their states), or what the API gave.
function pendingRecipients(m) {
  if (!Array.isArray(m.recipients)) return m.pending;
  return m.recipients.filter((r) => typeof r === 'string' || r.state === 'pending').map((r) => (typeof r === 'string' ? r : r.address));
}

function replyText(r) {
  if (!r) return '';
  if (typeof r === 'string') return r;
  return [r.code, r.status, r.text].filter((x) => x !== undefined && x !== null && x !== '').join(' ');
}

function summary(r) {
  if (typeof r === 'string') return r.trim();
  // An action's answer says what it did in `message` (quarantine, suppression, throttles), or how
  // many messages a queue action took (`{action, messages}`).
  if (r && typeof r.message === 'string') return r.message;
  if (r && typeof r.messages === 'number') return r.action + ': ' + r.messages + ' message(s)';
  return JSON.stringify(r);
}

// ---- Navigation ----------------------------------------------------------------------------------

function go(page, params) {
  location.hash = page + query(params || {});
}

let generation = 0;

// What the last action did, shown once by the page drawn after it.
let flash = '';

function takeFlash() {
  const text = flash;
  flash = '';
  return text;
}

async function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) { signOut(); return; }
  const [page, search] = (location.hash.slice(1) || 'overview').split('?');
  const params = Object.fromEntries(new URLSearchParams(search || ''));
  const render = pages[page] || pages.overview;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.getAttribute('href') === '#' + page);
  // Only the newest navigation draws: a page still loading when another is chosen is dropped.
  const mine = ++generation;
  const put = (...nodes) => { if (mine === generation) show(...nodes); };
  put(status('Loading…'));
  try { await render(params, put); }
  catch (e) { put(el('h2', {}, page), status(e.message, true)); }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById('nav').hidden = true;
  view().replaceChildren();
  document.getElementById('signin').hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  const token = document.getElementById('token').value.trim();
  const error = document.getElementById('signin-error');
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await get('/api/v1/pools');
    error.textContent = '';
    document.getElementById('signin').hidden = true;
    document.getElementById('nav').hidden = false;
    await route();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    error.textContent = 'Sign-in failed: ' + e.message;
  }
}

window.addEventListener('DOMContentLoaded', () => {
  document.getElementById('signin').addEventListener('submit', signIn);
  document.getElementById('signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  if (sessionStorage.getItem(TOKEN_KEY)) {
    document.getElementById('nav').hidden = false;
    route();
  } else {
    signOut();
  }
});
