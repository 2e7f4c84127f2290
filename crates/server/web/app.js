// hoard: the web page. Plain DOM, no dependencies; every API string is
// untrusted and only ever reaches the page through textContent or
// setAttribute.
'use strict';

const state = {
  me: null,          // GET /api/v1/me
  routeGen: 0,       // bumped on every navigation; stale answers are dropped
  refreshTimer: null,
  task: null,        // the task being followed in #task
  group: null,       // the group shown on the group page
};

const STALE_SECONDS = 26 * 3600;
const REFRESH_MS = 30000;
const VIEWS = ['login-view', 'dashboard', 'group', 'browser', 'task-page'];

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

// ---------------------------------------------------------------- DOM

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** el('a', {href: '#/', class: 'x'}, 'text', otherNode) */
function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function badge(text, kind) {
  return el('span', { class: `badge ${kind || ''}`.trim() }, text);
}

function emptyRow(columns, text) {
  return el('tr', { class: 'empty' }, el('td', { colspan: columns }, text));
}

function table(headers, rows, attrs) {
  return el('div', { class: 'table-wrap' },
    el('table', attrs || {},
      el('thead', {}, el('tr', {}, headers.map(([text, cls]) => el('th', { class: cls }, text)))),
      el('tbody', {}, rows)));
}

function facts(pairs) {
  return el('dl', { class: 'facts' }, pairs.map(([term, value, cls]) => [
    el('dt', {}, term), el('dd', { class: cls }, value),
  ]));
}

// ---------------------------------------------------------------- formats

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

function humanSize(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(Number(bytes))) return '—';
  let value = Number(bytes);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${value} B`;
  const digits = value >= 100 ? value.toFixed(0) : value.toFixed(1).replace(/\.0$/, '');
  return `${digits} ${UNITS[unit]}`;
}

function count(n) {
  return n === null || n === undefined ? '—' : Number(n).toLocaleString();
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

function humanAge(seconds) {
  if (seconds === null || seconds === undefined) return '';
  const ago = nowSeconds() - seconds;
  if (ago < 60) return 'just now';
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 48 * 3600) return `${Math.floor(ago / 3600)} h ago`;
  return `${Math.floor(ago / 86400)} d ago`;
}

function utcString(seconds) {
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function localString(seconds) {
  return new Date(seconds * 1000).toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
  });
}

/** A <time> in local time, with UTC in its title. */
function timeEl(seconds) {
  if (seconds === null || seconds === undefined) return el('span', { class: 'muted' }, 'never');
  const utc = utcString(seconds);
  return el('time', { datetime: utc, title: utc }, localString(seconds));
}

function timeWithAge(seconds) {
  if (seconds === null || seconds === undefined) return el('span', { class: 'muted' }, 'never');
  return el('span', { class: 'when' }, timeEl(seconds), ' ', el('span', { class: 'muted' }, humanAge(seconds)));
}

function rfc3339Local(text) {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) return el('span', {}, text || '');
  return timeEl(Math.floor(ms / 1000));
}

// ---------------------------------------------------------------- names and links

/** "vm/100/2026-…Z" → ["vm", "100", "2026-…Z"] */
function splitSnapshot(name) {
  const first = name.indexOf('/');
  const last = name.lastIndexOf('/');
  return [name.slice(0, first), name.slice(first + 1, last), name.slice(last + 1)];
}

function splitGroup(name) {
  const first = name.indexOf('/');
  return [name.slice(0, first), name.slice(first + 1)];
}

/** A page link: each part encoded on its own. */
function href(...parts) {
  return '#/' + parts.map((p) => enc(p)).join('/');
}

function snapshotApi(snapshot) {
  return '/api/v1/snapshots/' + splitSnapshot(snapshot).map(enc).join('/');
}

function browseHref(snapshot, archive, path) {
  const parts = path ? path.split('/').filter(Boolean) : [];
  return href('browse', ...splitSnapshot(snapshot), archive, ...parts);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
    this.handled = false;
  }
}

async function api(method, path, body) {
  const options = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (method !== 'GET') {
    options.headers['Content-Type'] = 'application/json';
    if (state.me && state.me.csrf) options.headers['X-CSRF-Token'] = state.me.csrf;
    options.body = JSON.stringify(body || {});
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new ApiError(0, `The server did not answer (${e.message}).`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = null; }
  }
  if (!response.ok) {
    const message = data && typeof data.error === 'string'
      ? data.error
      : `${response.status} ${response.statusText}`.trim();
    const error = new ApiError(response.status, message);
    if (response.status === 401 && path !== '/api/v1/login') {
      showLogin();
      error.handled = true;
    }
    throw error;
  }
  return data;
}

// ---------------------------------------------------------------- messages

function showMessage(text, kind) {
  const box = $('message');
  box.className = kind || 'info';
  box.textContent = text;
  box.hidden = false;
}

function hideMessage() {
  $('message').hidden = true;
}

/** Shows an error in #message, unless a 401 already sent us to the login. */
function report(error) {
  if (error && error.handled) return;
  if (!state.me) return; // a late answer after the session ended; the login form says why
  showMessage(error && error.message ? error.message : String(error), 'error');
}

// ---------------------------------------------------------------- session

function showLogin() {
  state.me = null;
  stopRefresh();
  stopTask();
  state.routeGen += 1;
  hideMessage();
  $('whoami').hidden = true;
  $('logout').hidden = true;
  showView('login-view');
  $('login-password').value = '';
  $('login-user').focus();
}

function showApp() {
  const me = state.me;
  $('whoami').textContent = `${me.name} · ${me.role}`;
  $('whoami').hidden = false;
  $('logout').hidden = false;
  $('login-error').hidden = true;
  route();
}

async function loadMe() {
  state.me = await api('GET', '/api/v1/me');
  state.me.may = state.me.may || {};
}

async function onLogin(event) {
  event.preventDefault();
  const errorBox = $('login-error');
  const button = $('login-submit');
  errorBox.hidden = true;
  button.disabled = true;
  try {
    const answer = await api('POST', '/api/v1/login', {
      user: $('login-user').value,
      password: $('login-password').value,
    });
    $('login-password').value = '';
    await loadMe();
    if (!state.me.csrf && answer && answer.csrf) state.me.csrf = answer.csrf;
    hideMessage();
    showApp();
  } catch (error) {
    if (error.handled) return;
    errorBox.textContent = error.message;
    errorBox.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function onLogout() {
  try {
    await api('POST', '/api/v1/logout', {});
  } catch (error) {
    report(error); // a 401 has already shown the login
    return;
  }
  showLogin();
}

// ---------------------------------------------------------------- routing

function showView(id) {
  for (const view of VIEWS) $(view).hidden = view !== id;
}

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  let parts;
  try {
    parts = raw.split('/').filter((p) => p !== '').map(decodeURIComponent);
  } catch (_) {
    return { view: 'unknown' };
  }
  const [page, ...rest] = parts;
  if (!page) return { view: 'dashboard' };
  if (page === 'group' && rest.length === 2) return { view: 'group', type: rest[0], id: rest[1] };
  if (page === 'browse' && rest.length >= 4) {
    const [type, id, time, archive, ...path] = rest;
    return { view: 'browser', snapshot: `${type}/${id}/${time}`, archive, path: path.join('/') };
  }
  if (page === 'tasks' && rest.length === 1) return { view: 'task-page', id: rest[0] };
  return { view: 'unknown' };
}

function route() {
  if (!state.me) return;
  const gen = ++state.routeGen;
  stopRefresh();
  stopTask();
  hideMessage();
  const r = parseRoute();
  if (r.view === 'unknown') {
    location.replace('#/');
    return;
  }
  showView(r.view);
  window.scrollTo(0, 0);
  if (r.view === 'dashboard') openDashboard(gen);
  else if (r.view === 'group') openGroup(gen, `${r.type}/${r.id}`);
  else if (r.view === 'browser') openBrowser(gen, r.snapshot, r.archive, r.path);
  else if (r.view === 'task-page') openTaskPage(r.id);
}

// ---------------------------------------------------------------- dashboard

function openDashboard(gen) {
  const admin = Boolean(state.me.may.admin);
  for (const id of ['reports', 'maintenance', 'connections']) $(id).hidden = !admin;
  document.title = 'hoard';
  loadDashboard(gen);
  state.refreshTimer = setInterval(() => {
    if (!document.hidden) loadDashboard(gen);
  }, REFRESH_MS);
}

function stopRefresh() {
  clearInterval(state.refreshTimer);
  state.refreshTimer = null;
}

async function loadDashboard(gen) {
  const jobs = [loadUsage(gen), loadGroups(gen)];
  if (state.me.may.admin) jobs.push(loadReports(gen), loadConnections(gen), loadTasks(gen));
  await Promise.all(jobs.map((job) => job.catch(report)));
}

// --- usage

async function loadUsage(gen) {
  // The chunk store's size and history are server-wide figures, shown to
  // admins and readers of every path only.
  const server = Boolean(state.me.may.server);
  const [status, usage] = await Promise.all([
    api('GET', '/api/v1/status'),
    server ? api('GET', '/api/v1/usage') : Promise.resolve(null),
  ]);
  if (gen !== state.routeGen) return;
  renderUsageStats(status);
  drawUsageChart($('usage-chart'), (usage && usage.samples) || []);
}

function usageBar(used, total) {
  const pct = total > 0 ? Math.min(100, (used / total) * 100) : 0;
  const level = pct >= 90 ? 'level-bad' : pct >= 75 ? 'level-warn' : 'level-ok';
  return svg('svg', { class: 'bar', viewBox: '0 0 100 6', preserveAspectRatio: 'none', role: 'img',
    'aria-label': `${pct.toFixed(0)} % used` },
  svg('rect', { class: 'bar-track', x: 0, y: 0, width: 100, height: 6, rx: 1 }),
  svg('rect', { class: `bar-fill ${level}`, x: 0, y: 0, width: pct.toFixed(2), height: 6, rx: 1 }));
}

function renderUsageStats(status) {
  const ds = (status && status.datastore) || {};
  if (!state.me.may.server) {
    $('usage-stats').replaceChildren(
      el('p', { class: 'muted small' }, 'The datastore\'s size is shown to admins.'),
      facts([
        ['Groups', count(status && status.groups), 'num'],
        ['Snapshots', count(status && status.snapshots), 'num'],
        ['Server', status && status.version ? `hoard ${status.version}` : '—', 'num'],
      ]));
    return;
  }
  const pct = ds.fs_total > 0 ? Math.round((ds.fs_used / ds.fs_total) * 100) : 0;
  const counted = ds.chunks === null || ds.chunks === undefined;
  $('usage-stats').replaceChildren(
    el('p', { class: 'usage-headline' },
      el('strong', {}, humanSize(ds.fs_used)), ` of ${humanSize(ds.fs_total)} used`,
      el('span', { class: 'muted' }, ` · ${pct} %`)),
    usageBar(ds.fs_used || 0, ds.fs_total || 0),
    el('p', { class: 'muted small' }, `${humanSize(ds.fs_avail)} free on ${ds.path || 'the datastore'}`),
    facts([
      ['Chunks', counted ? 'not counted yet' : count(ds.chunks), 'num'],
      ['Chunk bytes', counted ? '—' : humanSize(ds.chunk_bytes), 'num'],
      ['Counted', ds.counted ? humanAge(ds.counted) : '—', 'num'],
      ['Groups', count(status && status.groups), 'num'],
      ['Snapshots', count(status && status.snapshots), 'num'],
      ['Server', status && status.version ? `hoard ${status.version}` : '—', 'num'],
    ]));
}

/** Round tick values for a byte axis: steps of 1, 2, 2.5 or 5 × 10ⁿ of a binary unit. */
function byteTicks(max, wanted = 4) {
  const unit = 1024 ** Math.max(0, Math.floor(Math.log(Math.max(max, 1)) / Math.log(1024)));
  const raw = max / unit / wanted;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(1, [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) * unit);
  const ticks = [0];
  while (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

function timeLabel(seconds, span) {
  const d = new Date(seconds * 1000);
  if (span > 3 * 86400) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  if (span > 86400) {
    return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  }
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function drawUsageChart(node, rawSamples) {
  const W = 640;
  const H = 220;
  const M = { left: 64, right: 16, top: 12, bottom: 28 };
  node.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const samples = rawSamples.filter((s) => Number.isFinite(s.time)).sort((a, b) => a.time - b.time);
  if (samples.length < 2) {
    const why = state.me.may.server ? 'Not enough history yet' : 'The datastore\'s history is shown to admins';
    node.replaceChildren(svg('text', { class: 'chart-empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, why));
    return;
  }
  const t0 = samples[0].time;
  const span = Math.max(1, samples[samples.length - 1].time - t0);
  // The chunk store's own size: the file system's use is in the bar
  // beside, and on one scale it would flatten the store to a line.
  let max = 1;
  for (const s of samples) max = Math.max(max, s.chunk_bytes || 0);
  const ticks = byteTicks(max);
  const top = ticks[ticks.length - 1];
  const x = (t) => (M.left + ((t - t0) / span) * (W - M.left - M.right)).toFixed(1);
  const y = (v) => (H - M.bottom - (v / top) * (H - M.top - M.bottom)).toFixed(1);

  const grid = ticks.map((v) => svg('g', { class: 'tick' },
    svg('line', { class: 'grid', x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
    svg('text', { class: 'axis', x: M.left - 6, y: y(v), 'text-anchor': 'end', 'dominant-baseline': 'middle' },
      humanSize(v))));
  const xLabels = [0, 1, 2, 3, 4].map((i) => {
    const t = t0 + (span * i) / 4;
    const anchor = i === 0 ? 'start' : i === 4 ? 'end' : 'middle';
    return svg('text', { class: 'axis', x: x(t), y: H - 8, 'text-anchor': anchor }, timeLabel(t, span));
  });

  const chunks = samples.filter((s) => Number.isFinite(s.chunk_bytes));
  const line = (list, key) => list.map((s) => `${x(s.time)},${y(s[key])}`).join(' ');
  const area = chunks.length
    ? `M${x(chunks[0].time)},${y(0)} L${line(chunks, 'chunk_bytes').replace(/ /g, ' L')} L${x(chunks[chunks.length - 1].time)},${y(0)} Z`
    : '';

  node.replaceChildren(
    svg('title', {}, 'Chunk store size over time'),
    ...grid,
    svg('path', { class: 'area-chunks', d: area }),
    svg('polyline', { class: 'line-chunks', points: line(chunks, 'chunk_bytes') }),
    svg('line', { class: 'axis-line', x1: M.left, x2: W - M.right, y1: y(0), y2: y(0) }),
    ...xLabels);
}

// --- groups

async function loadGroups(gen) {
  const groups = await api('GET', '/api/v1/groups');
  if (gen !== state.routeGen) return;
  const rows = [...(groups || [])].sort((a, b) =>
    (Number(Boolean(b.failing)) - Number(Boolean(a.failing))) || collator.compare(a.group, b.group));
  const body = $('groups').tBodies[0];
  if (rows.length === 0) body.replaceChildren(emptyRow(7, 'No backups yet.'));
  else body.replaceChildren(...rows.map(groupRow));
}

function lastBackupTime(g) {
  if (g.last_complete !== null && g.last_complete !== undefined) return g.last_complete;
  return g.last ? g.last.time : null;
}

function groupRow(g) {
  const last = g.last || null;
  const newest = lastBackupTime(g);
  const stale = newest === null || nowSeconds() - newest > STALE_SECONDS;
  const [type, id] = splitGroup(g.group);
  const classes = [g.failing ? 'failing' : '', stale ? 'stale' : ''].filter(Boolean).join(' ');
  return el('tr', { 'data-group': g.group, class: classes || null },
    el('td', {},
      el('a', { class: 'group-link', href: href('group', type, id) }, g.group),
      g.failing ? badge('failing', 'bad') : null,
      stale && !g.failing ? badge('stale', 'warn') : null),
    el('td', {}, g.owner || '—'),
    el('td', { class: 'num' }, count(g.snapshots),
      g.protected ? el('span', { class: 'muted', title: 'protected' }, ` · ${g.protected} protected`) : null),
    el('td', {}, last ? timeWithAge(last.time) : el('span', { class: 'muted' }, 'none'),
      last && g.last_complete && g.last_complete !== last.time
        ? el('div', { class: 'muted small' }, `last complete ${humanAge(g.last_complete)}`) : null),
    el('td', { class: 'num' }, last ? humanSize(last.size) : '—'),
    el('td', {}, verifyBadge(last ? last.verify : null)),
    el('td', {}, last ? stateBadge(last.state) : '—'));
}

function verifyBadge(verify, time) {
  const title = time ? `verified ${utcString(time)}` : null;
  if (verify === 'ok') return el('span', { class: 'badge ok', title }, 'ok');
  if (verify === 'failed') return el('span', { class: 'badge bad', title }, 'failed');
  if (verify) return el('span', { class: 'badge', title }, verify);
  return el('span', { class: 'muted' }, 'not verified');
}

function stateBadge(stateName) {
  const kind = stateName === 'complete' ? 'ok' : stateName === 'writing' ? 'info' : 'bad';
  return badge(stateName || 'unknown', kind);
}

// --- reports, connections, tasks (admin)

async function loadReports(gen) {
  const reports = (await api('GET', '/api/v1/reports')) || {};
  if (gen !== state.routeGen) return;
  $('reports-body').replaceChildren(
    reportBlock('gc', 'Garbage collection', reports.gc, gcFacts),
    reportBlock('prune', 'Prune', reports.prune, pruneFacts),
    reportBlock('verify', 'Verify', reports.verify, verifyFacts));
}

function reportBlock(key, title, entry, describe) {
  const head = el('h3', {}, title, ' ', entry ? badge(entry.ok ? 'ok' : 'failed', entry.ok ? 'ok' : 'bad') : null);
  if (!entry) return el('div', { class: 'report', 'data-report': key }, head, el('p', { class: 'muted' }, 'Never run.'));
  return el('div', { class: 'report', 'data-report': key }, head,
    el('p', { class: 'muted small' }, timeWithAge(entry.time), entry.by ? ` · by ${entry.by}` : ''),
    typeof entry.error === 'string' ? el('p', { class: 'error small' }, entry.error) : null,
    entry.report ? facts(describe(entry.report)) : null);
}

function gcFacts(g) {
  const pairs = [
    ['Removed', `${count(g.removed_chunks)} chunks · ${humanSize(g.removed_bytes)}`, 'num'],
    ['Kept', `${count(g.kept_chunks)} chunks · ${humanSize(g.kept_bytes)}`, 'num'],
  ];
  if (g.missing_chunks) pairs.push(['Missing', count(g.missing_chunks), 'num bad-text']);
  return pairs;
}

function verdictCounts(v) {
  const list = Array.isArray(v.snapshots) ? v.snapshots : [];
  const by = (result) => list.filter((s) => s.result === result).length;
  return { total: list.length, failed: by('failed'), skipped: by('skipped') };
}

function verifyFacts(v) {
  const c = verdictCounts(v);
  const pairs = [
    ['Snapshots', count(c.total), 'num'],
    ['Failed', count(c.failed), c.failed ? 'num bad-text' : 'num'],
  ];
  if (c.skipped) pairs.push(['Skipped', count(c.skipped), 'num']);
  if (v.bytes_checked !== undefined) pairs.push(['Checked', humanSize(v.bytes_checked), 'num']);
  return pairs;
}

/** Prune results come as a list of decisions, or (from the CLI) {dry_run, policy, snapshots}. */
function pruneDecisions(result) {
  if (Array.isArray(result)) return result;
  if (result && Array.isArray(result.snapshots)) return result.snapshots;
  return [];
}

function pruneFacts(p) {
  const list = pruneDecisions(p);
  const removed = list.filter((d) => d.action === 'remove').length;
  const pairs = [
    ['Kept', count(list.length - removed), 'num'],
    ['Removed', count(removed), 'num'],
  ];
  if (p && p.dry_run) pairs.push(['Mode', 'dry run', 'num']);
  return pairs;
}

async function loadConnections(gen) {
  const list = (await api('GET', '/api/v1/connections')) || [];
  if (gen !== state.routeGen) return;
  const rows = list.map((c) => el('tr', {},
    el('td', {}, c.peer), el('td', {}, c.principal),
    el('td', { class: 'muted' }, humanAge(c.since)),
    el('td', { class: 'num' }, humanSize(c.bytes_received)),
    el('td', { class: 'num' }, count(c.chunks_received)),
    el('td', {}, (c.backups || []).map((b) => el('div', { class: 'small' }, b)))));
  $('connections-body').replaceChildren(rows.length === 0
    ? el('p', { class: 'muted' }, 'No open connections.')
    : table([['Peer'], ['Who'], ['Since'], ['Received', 'num'], ['Chunks', 'num'], ['Writing']], rows));
}

async function loadTasks(gen) {
  const answer = await api('GET', '/api/v1/tasks');
  if (gen !== state.routeGen) return;
  const list = (Array.isArray(answer) ? answer : (answer && answer.tasks) || [])
    .slice().sort((a, b) => (b.started || 0) - (a.started || 0)).slice(0, 10);
  const rows = list.map((t) => el('tr', { 'data-task': t.id },
    el('td', {}, el('a', { href: href('tasks', t.id) }, t.kind || t.id)),
    el('td', {}, t.by || ''),
    el('td', {}, taskStateBadge(t.state)),
    el('td', { class: 'muted' }, humanAge(t.started))));
  $('tasks').replaceChildren(rows.length === 0
    ? el('p', { class: 'muted' }, 'No tasks since the server started.')
    : table([['Task'], ['By'], ['State'], ['Started']], rows));
}

function taskStateBadge(s) {
  return badge(s || 'unknown', s === 'ok' ? 'ok' : s === 'failed' ? 'bad' : 'info');
}

async function runMaintenance(button, path) {
  button.disabled = true;
  try {
    const answer = await api('POST', path, {});
    const gen = state.routeGen;
    showTask(answer.task, $('maintenance-task-host'), {
      onDone: () => { if (gen === state.routeGen) loadDashboard(gen); },
    });
    loadTasks(gen).catch(report);
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- group page

function openGroup(gen, group) {
  state.group = group;
  document.title = `${group} · hoard`;
  $('group-crumb').textContent = group;
  $('group-title').textContent = group;
  $('group-summary').textContent = '';
  $('prune').hidden = !state.me.may.maintain;
  const dry = $('prune-dry-run');
  if (!state.me.may.admin) dry.checked = true;
  dry.disabled = !state.me.may.admin;
  dry.title = state.me.may.admin ? '' : 'only an admin removes snapshots';
  $('snapshots').tBodies[0].replaceChildren(emptyRow(7, 'Loading…'));
  loadSnapshots(gen, group).catch(report);
}

async function loadSnapshots(gen, group) {
  const list = (await api('GET', '/api/v1/snapshots?group=' + enc(group))) || [];
  if (gen !== state.routeGen) return;
  const body = $('snapshots').tBodies[0];
  if (list.length === 0) {
    body.replaceChildren(emptyRow(7, 'This group has no snapshots.'));
  } else {
    body.replaceChildren(...list.map(snapshotRow));
  }
  const protectedCount = list.filter((s) => s.protected).length;
  const owner = list.length ? list[0].owner : null;
  $('group-summary').textContent = [
    `${list.length} snapshot${list.length === 1 ? '' : 's'}`,
    protectedCount ? `${protectedCount} protected` : null,
    owner ? `owner ${owner}` : null,
  ].filter(Boolean).join(' · ');
}

function snapshotRow(s) {
  return el('tr', { 'data-snapshot': s.snapshot, class: s.state === 'complete' ? null : 'unfinished' },
    el('td', {}, timeEl(s.time)),
    el('td', {}, stateBadge(s.state)),
    el('td', {}, verifyBadge(s.verify ? s.verify.state : null, s.verify ? s.verify.time : null)),
    el('td', { class: 'flags' },
      s.protected ? el('span', { class: 'badge lock', title: 'protected: never pruned' }, 'protected') : null,
      s.encrypted ? el('span', { class: 'badge enc', title: 'encrypted by the client' }, 'encrypted') : null),
    el('td', { class: 'num' }, humanSize(s.size)),
    el('td', { class: 'contents' }, snapshotContents(s)),
    el('td', { class: 'actions' }, state.me.may.maintain ? protectButton(s) : null));
}

function snapshotContents(s) {
  if (s.encrypted) {
    return el('span', { class: 'muted' }, "encrypted: restore with the client's key");
  }
  const sizes = new Map((s.files || []).filter((f) => f.kind === 'image').map((f) => [f.image, f.size]));
  const archives = (s.archives || []).map((name) =>
    el('a', { class: 'browse', 'data-archive': name, href: browseHref(s.snapshot, name, '') }, `${name}/`));
  const images = (s.images || []).map((name) =>
    el('a', {
      class: 'image-download', href: `${snapshotApi(s.snapshot)}/images/${enc(name)}`, download: name,
      title: sizes.has(name) ? `download, ${humanSize(sizes.get(name))}` : 'download',
    }, `↓ ${name}`));
  const all = [...archives, ...images];
  return all.length ? all : el('span', { class: 'muted' }, 'empty');
}

function protectButton(s) {
  // Only an admin may take protection away (docs/security.md).
  if (s.protected && !state.me.may.admin) {
    return el('span', { class: 'muted small', title: 'an admin can unprotect it' }, 'protected');
  }
  const action = s.protected ? 'unprotect' : 'protect';
  const button = el('button', { type: 'button', class: action }, s.protected ? 'Unprotect' : 'Protect');
  button.addEventListener('click', () => toggleProtect(s, action, button));
  return button;
}

async function toggleProtect(s, action, button) {
  button.disabled = true;
  const gen = state.routeGen;
  try {
    await api('POST', `${snapshotApi(s.snapshot)}/${action}`, {});
    await loadSnapshots(gen, state.group);
  } catch (error) {
    report(error);
    button.disabled = false;
  }
}

// --- prune

const PRUNE_KEYS = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'];

function readKeep() {
  const keep = {};
  for (const key of PRUNE_KEYS) {
    const value = parseInt($(`prune-${key}`).value, 10);
    keep[key] = Number.isFinite(value) && value > 0 ? value : 0;
  }
  return keep;
}

async function onPrune(event) {
  event.preventDefault();
  const keep = readKeep();
  if (!PRUNE_KEYS.some((k) => keep[k] > 0)) {
    showMessage('Prune needs at least one number to keep.', 'error');
    return;
  }
  // Only an admin may remove snapshots; others see what a policy does.
  const dryRun = $('prune-dry-run').checked || !state.me.may.admin;
  const group = state.group;
  const gen = state.routeGen;
  const button = $('prune-run');
  button.disabled = true;
  hideMessage();
  try {
    const answer = await api('POST', '/api/v1/prune', { group, keep, dry_run: dryRun });
    showTask(answer.task, $('prune-task-host'), {
      dryRun,
      onDone: () => { if (!dryRun && gen === state.routeGen) loadSnapshots(gen, group).catch(report); },
    });
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- archive browser

function openBrowser(gen, snapshot, archive, path) {
  document.title = `${archive}/${path} · ${snapshot} · hoard`;
  renderBreadcrumb(snapshot, archive, path);
  $('entries').tBodies[0].replaceChildren(emptyRow(4, 'Loading…'));
  loadEntries(gen, snapshot, archive, path).catch((error) => {
    if (gen === state.routeGen) $('entries').tBodies[0].replaceChildren(emptyRow(4, 'Could not list this directory.'));
    report(error);
  });
}

function renderBreadcrumb(snapshot, archive, path) {
  const [type, id, time] = splitSnapshot(snapshot);
  const parts = path.split('/').filter(Boolean);
  const crumbs = [
    el('a', { href: href('group', type, id), title: 'the group’s snapshots' }, `${type}/${id}`),
    el('a', { href: href('group', type, id), class: 'muted-link' }, time),
    el('a', { href: browseHref(snapshot, archive, '') }, archive),
    ...parts.map((part, i) => el('a', { href: browseHref(snapshot, archive, parts.slice(0, i + 1).join('/')) }, part)),
  ];
  crumbs[crumbs.length - 1].setAttribute('aria-current', 'page');
  const nodes = [];
  crumbs.forEach((crumb, i) => {
    if (i > 0) nodes.push(el('span', { class: 'sep' }, i === 1 ? ' / ' : ' › '));
    nodes.push(crumb);
  });
  $('browser-path').replaceChildren(...nodes);
}

async function loadEntries(gen, snapshot, archive, path) {
  const query = path ? `?path=${enc(path)}` : '';
  const answer = await api('GET', `${snapshotApi(snapshot)}/archives/${enc(archive)}/list${query}`);
  if (gen !== state.routeGen) return;
  const base = path.split('/').filter(Boolean).join('/');
  const entries = [...((answer && answer.entries) || [])].sort((a, b) =>
    (Number(b.kind === 'dir') - Number(a.kind === 'dir')) || collator.compare(a.name, b.name));
  const body = $('entries').tBodies[0];
  if (entries.length === 0) body.replaceChildren(emptyRow(4, 'This directory is empty.'));
  else body.replaceChildren(...entries.map((e) => entryRow(snapshot, archive, base, e)));
}

function entryRow(snapshot, archive, base, e) {
  const full = base ? `${base}/${e.name}` : e.name;
  return el('tr', { 'data-name': e.name, class: `kind-${e.kind}` },
    el('td', { class: 'name' }, entryName(snapshot, archive, full, e)),
    el('td', { class: 'mode' }, e.mode || ''),
    el('td', { class: 'num' }, e.kind === 'file' ? humanSize(e.size) : ''),
    el('td', {}, e.mtime ? rfc3339Local(e.mtime) : ''));
}

function entryName(snapshot, archive, full, e) {
  if (e.kind === 'dir') {
    return el('a', { class: 'dir-link', href: browseHref(snapshot, archive, full) }, `${e.name}/`);
  }
  if (e.kind === 'file') {
    const url = `${snapshotApi(snapshot)}/archives/${enc(archive)}/file?path=${enc(full)}`;
    return el('a', { class: 'file-download', href: url, download: e.name, title: 'download' }, e.name);
  }
  if (e.kind === 'symlink') {
    return [el('span', {}, e.name), el('span', { class: 'muted' }, ` → ${e.target || ''}`)];
  }
  return [el('span', {}, e.name), ' ', badge(e.kind || 'other', '')];
}

// ---------------------------------------------------------------- tasks

function openTaskPage(id) {
  document.title = `task ${id} · hoard`;
  showTask(id, $('task-page-host'), { onPage: true });
}

/** Moves the #task box into `host` and follows task `id` there. */
function showTask(id, host, options) {
  stopTask();
  const box = $('task');
  host.append(box);
  box.hidden = false;
  $('task-title').textContent = `Task ${id}`;
  $('task-link').setAttribute('href', href('tasks', id));
  $('task-link').hidden = Boolean(options.onPage);
  $('task-meta').textContent = '';
  $('task-progress').textContent = '';
  $('task-log').textContent = '';
  $('task-result').replaceChildren();
  setTaskState('running');
  state.task = { id, since: 0, timer: null, options };
  pollTask(state.task);
}

function stopTask() {
  if (state.task) clearTimeout(state.task.timer);
  state.task = null;
  const box = $('task');
  if (box) box.hidden = true;
}

function setTaskState(s) {
  const node = $('task-state');
  node.textContent = s;
  node.className = `badge ${s === 'ok' ? 'ok' : s === 'failed' ? 'bad' : 'info'}`;
}

async function pollTask(t) {
  let task;
  try {
    task = await api('GET', `/api/v1/tasks/${enc(t.id)}?since=${t.since}`);
  } catch (error) {
    if (state.task !== t) return;
    report(error);
    // The server may be restarting: try again, more slowly. A 4xx is final.
    if (!error.handled && (error.status === 0 || error.status >= 500)) {
      t.timer = setTimeout(() => pollTask(t), 3000);
    }
    return;
  }
  if (state.task !== t) return;
  renderTask(t, task);
  if (task.state === 'running') {
    t.timer = setTimeout(() => pollTask(t), 1000);
  } else {
    renderTaskResult(t, task);
    if (t.options.onDone) t.options.onDone(task);
  }
}

function renderTask(t, task) {
  setTaskState(task.state);
  $('task-meta').textContent = [
    task.kind || null,
    task.by ? `by ${task.by}` : null,
    task.started ? `started ${localString(task.started)}` : null,
    task.finished ? `finished ${localString(task.finished)}` : null,
  ].filter(Boolean).join(' · ');
  $('task-progress').textContent = task.progress || '';
  const lines = Array.isArray(task.log) ? task.log : [];
  if (lines.length) {
    const pre = $('task-log');
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    pre.append(lines.map((line) => `${line}\n`).join(''));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  t.since += lines.length;
}

function renderTaskResult(t, task) {
  const out = [];
  if (task.state === 'failed') out.push(el('p', { class: 'error' }, task.error || 'The task failed.'));
  const result = task.result;
  if (result !== null && result !== undefined) {
    if (task.kind === 'prune') out.push(...pruneResult(result, t.options.dryRun));
    else if (task.kind === 'verify') out.push(facts(verifyFacts(result)), verifyFindings(result));
    else if (task.kind === 'gc') out.push(facts(gcFacts(result)));
  }
  $('task-result').replaceChildren(...out.filter(Boolean));
}

function verifyFindings(v) {
  const failed = (v.snapshots || []).filter((s) => s.result === 'failed');
  if (!failed.length) return null;
  return el('ul', { class: 'findings' }, failed.map((s) =>
    el('li', {}, el('span', { class: 'bad-text' }, s.snapshot), s.reason ? ` — ${s.reason}` : '')));
}

const REASONS = {
  protected: 'protected',
  'in-progress': 'being written',
  partial: 'unfinished, newer than any complete snapshot',
  'keep-last': 'keep-last',
  'keep-hourly': 'keep-hourly',
  'keep-daily': 'keep-daily',
  'keep-weekly': 'keep-weekly',
  'keep-monthly': 'keep-monthly',
  'keep-yearly': 'keep-yearly',
  'in-use': 'in use (base of a running backup, or being read)',
  expired: 'not kept by any option',
  superseded: 'unfinished, a newer complete snapshot exists',
};

function pruneResult(result, dryRunAsked) {
  const list = pruneDecisions(result);
  const removes = list.filter((d) => d.action === 'remove');
  // Known when started here; else from the result: a dry run removes nothing it decides to remove.
  let dryRun = dryRunAsked;
  if (dryRun === undefined) {
    dryRun = result && typeof result.dry_run === 'boolean'
      ? result.dry_run
      : removes.length > 0 && removes.every((d) => !d.removed);
  }
  const heading = dryRun
    ? 'Dry run: nothing was removed'
    : removes.length ? `Removed ${removes.length} snapshot${removes.length === 1 ? '' : 's'}` : 'Nothing was removed';
  const summary = `${list.length - removes.length} kept, ${removes.length} ${dryRun ? 'would be removed' : 'removed'}`;
  const rows = list.map((d) => el('tr', { 'data-snapshot': d.snapshot },
    el('td', {}, d.snapshot),
    el('td', { class: d.action === 'remove' ? 'action-remove' : 'action-keep' }, d.action),
    el('td', { class: 'muted' }, REASONS[d.reason] || String(d.reason || ''))));
  return [
    el('h3', { class: dryRun ? 'dry-run' : null }, heading),
    el('p', { class: 'muted small' }, summary, dryRun ? '' : '; run GC to free their chunks'),
    table([['Snapshot'], ['Action'], ['Reason']], rows.length ? rows : [emptyRow(3, 'No snapshots.')],
      { id: 'prune-result' }),
  ];
}

// ---------------------------------------------------------------- start

function wire() {
  $('login').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', onLogout);
  $('message').addEventListener('click', hideMessage);
  $('prune-form').addEventListener('submit', onPrune);
  $('verify-run').addEventListener('click', (e) => runMaintenance(e.currentTarget, '/api/v1/verify'));
  $('gc-run').addEventListener('click', (e) => runMaintenance(e.currentTarget, '/api/v1/gc'));
  window.addEventListener('hashchange', route);
}

async function start() {
  wire();
  try {
    await loadMe();
  } catch (error) {
    if (!error.handled) {
      showLogin();
      showMessage(error.message, 'error');
    }
    return;
  }
  showApp();
}

start();
