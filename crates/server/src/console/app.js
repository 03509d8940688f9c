// Shoal's web console: plain JavaScript, no framework, no build step, nothing fetched from
// elsewhere (the machines running a cluster may be offline).
//
//   hash route ──► page ──► sql() ──► POST v1/sql  (JSON answer: columns + rows)
//                    │                                 on 401: the login form
//                    └──► sampleMetrics() ──► GET metrics (Prometheus text, no login)
//
// Invariants:
// - Data reaches the DOM only as text (textContent, text nodes, setAttribute): never as
//   HTML. The one link built from data (a node's HTTP address) is checked to be http(s).
// - The credential lives in sessionStorage only, and is dropped on a 401.
// - Every list shown is bounded (GRID_ROWS_MAX, CHART_POINTS_MAX, SERIES_MAX, SPARK_SAMPLES).
// - A page's refreshes never overlap, stop while the tab is hidden or a login is needed,
//   and every request carries a client-side deadline.

const REFRESH_MS = 5000;
const REQUEST_TIMEOUT_MS = 15000;
const GRID_ROWS_MAX = 1000;
const CHART_POINTS_MAX = 10000;
const SERIES_MAX = 12;
const SPARK_SAMPLES = 60;
const AUTH_KEY = 'shoal.console.authorization';
const WHO_KEY = 'shoal.console.who';
const SQL_KEY = 'shoal.console.sql';
// The console's own queries read local snapshots, so any node answers them from what it
// has (they keep working while group 0 has no quorum), and none may hang.
const MONITOR_PARAMS = 'read_consistency=eventual&statement_timeout=5s';
const COLORS = ['#1f6feb', '#d1242f', '#1a7f37', '#8250df', '#bf8700', '#0a7ea4',
  '#cf222e', '#57606a', '#e16f24', '#116329', '#6639ba', '#953800'];

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// DOM helpers: everything from the network goes through these, as text.

/** An element with attributes (set with setAttribute) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** An SVG element. */
function svg(tag, attrs = {}) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(e, attrs);
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.setAttribute('class', v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
}

function show(node, visible) {
  node.hidden = !visible;
}

/** Fills a table's head with column titles (optionally a type line under each). */
function setHead(table, columns) {
  const tr = el('tr', {}, columns.map((c) => el('th', { title: c.title },
    c.label, c.type ? el('span', { class: 'type' }, c.type) : null)));
  table.tHead.replaceChildren(tr);
}

function nullCell() {
  return el('span', { class: 'null' }, 'NULL');
}

// ---------------------------------------------------------------------------------------
// Formatting.

const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const sigFmt = new Intl.NumberFormat('en-US', { maximumSignificantDigits: 4 });

function fmtInt(n) {
  return n == null ? '–' : intFmt.format(n);
}

/** `1 row`, `2 rows`. */
function plural(n, word) {
  return `${fmtInt(n)} ${n === 1 ? word : `${word}s`}`;
}

function fmtRate(r) {
  if (r == null || !Number.isFinite(r)) return '–';
  return r < 10 ? r.toFixed(1) : intFmt.format(Math.round(r));
}

function fmtBytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtDuration(s) {
  if (s == null) return '–';
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** Milliseconds since the epoch of an RFC 3339 string (any number of fraction digits). */
function parseTime(v) {
  if (typeof v !== 'string') return NaN;
  return Date.parse(v.replace(/(\.\d{3})\d+/, '$1'));
}

/** A time-axis label: as precise as the step between ticks needs (UTC). */
function fmtTick(ms, stepMs, spanMs) {
  const iso = new Date(ms).toISOString();
  if (stepMs < 1000) return iso.slice(11, 23);
  if (stepMs < 60000) return iso.slice(11, 19);
  if (stepMs < 86400000) return spanMs < 86400000 ? iso.slice(11, 16) : `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
  return iso.slice(0, 10);
}

function since(v) {
  const t = parseTime(v);
  if (!Number.isFinite(t)) return null;
  return fmtDuration(Math.max(0, Math.round((Date.now() - t) / 1000)));
}

function badge(text, kind) {
  return el('span', { class: `badge ${kind}` }, text);
}

const SWIM_KIND = { ALIVE: 'ok', SUSPECT: 'warn', DEAD: 'bad', LEFT: 'idle' };
const LIFECYCLE_KIND = {
  ACTIVE: 'ok', JOINING: 'warn', DRAINING: 'warn', DECOMMISSIONING: 'warn',
  DECOMMISSIONED: 'idle',
};
const MOVE_ACTIVE = ['PENDING', 'CATCHING_UP', 'SWAPPING'];
const MOVE_KIND = {
  PENDING: 'warn', CATCHING_UP: 'warn', SWAPPING: 'warn', COMPLETED: 'ok', FAILED: 'bad',
  CANCELLED: 'idle',
};

// ---------------------------------------------------------------------------------------
// The SQL API.

/** A refused request: HTTP status, the server's message and SQLSTATE. */
class SqlError extends Error {
  constructor(status, message, sqlstate, retryAfter) {
    super(message);
    this.status = status;
    this.sqlstate = sqlstate;
    this.retryAfter = retryAfter;
  }

  describe() {
    const code = this.sqlstate ? `SQLSTATE ${this.sqlstate}` : (this.status ? `HTTP ${this.status}` : 'network');
    let text = `ERROR ${code}: ${this.message}`;
    if (this.status === 403) text += '\n(your user lacks the role this needs)';
    if (this.status === 429 && this.retryAfter) text += `\n(retry in ${this.retryAfter} s)`;
    return text;
  }
}

/** Statements this console sent (to leave them out of the queries/s rate). */
let ownStatements = 0;

/**
 * Runs one SQL text on this node. The body is JSON (`{"sql": …}`), so no SQL text can be
 * mistaken for another encoding. `X-Requested-With` asks the node not to send a Basic
 * challenge on 401, which would make the browser show its own login dialog over ours.
 */
async function sql(text, { params = '', signal } = {}) {
  const headers = {
    'Content-Type': 'application/json',
    'X-Requested-With': 'shoal-console',
    Accept: 'application/json',
  };
  const auth = sessionStorage.getItem(AUTH_KEY);
  if (auth) headers.Authorization = auth;
  const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
  const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
  let r;
  try {
    r = await fetch(`v1/sql${params ? `?${params}` : ''}`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ sql: text }),
      credentials: 'omit',
      cache: 'no-store',
      signal: combined,
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    const why = timeout.aborted ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : `cannot reach the node (${e.message})`;
    throw new SqlError(0, why, null, null);
  }
  // The node counts every request in shoal_queries_total but those refused at the gate.
  if (r.status !== 401 && r.status !== 429) ownStatements += 1;
  const raw = await r.text();
  let body = null;
  try {
    body = JSON.parse(raw);
  } catch {
    // Not JSON (a proxy's error page, say): reported below with the status.
  }
  if (!r.ok) {
    const err = new SqlError(r.status, body?.error ?? (raw.trim() || r.statusText),
      body?.sqlstate ?? null, r.headers.get('Retry-After'));
    // A late 401 for a credential already replaced (the user logged in meanwhile) is stale.
    if (r.status === 401 && sessionStorage.getItem(AUTH_KEY) === auth) needLogin(err.message);
    throw err;
  }
  if (body == null || typeof body !== 'object') {
    throw new SqlError(r.status, 'the answer is not JSON', null, null);
  }
  return body;
}

/** A monitoring query's rows as objects keyed by column name. */
async function records(text) {
  const res = await sql(text, { params: MONITOR_PARAMS });
  const names = (res.columns ?? []).map((c) => c.name);
  return (res.rows ?? []).map((row) => Object.fromEntries(names.map((n, i) => [n, row[i]])));
}

// ---------------------------------------------------------------------------------------
// Login.

let loginNeeded = false;

function needLogin(message) {
  sessionStorage.removeItem(AUTH_KEY);
  sessionStorage.removeItem(WHO_KEY);
  loginNeeded = true;
  const err = $('login-error');
  err.textContent = message ? `401: ${message}` : '';
  show(err, Boolean(message));
  show($('login'), true);
  show($('pages'), false);
  updateWho();
}

function base64Utf8(s) {
  let bin = '';
  for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
  return btoa(bin);
}

async function login(ev) {
  ev.preventDefault();
  const user = $('login-user').value.trim();
  const password = $('login-password').value;
  const token = $('login-token').value.trim();
  const err = $('login-error');
  let header;
  let who;
  if (token) {
    header = `Token ${token}`;
    who = 'token';
  } else if (user) {
    header = `Basic ${base64Utf8(`${user}:${password}`)}`;
    who = user;
  } else {
    err.textContent = 'Enter a user and password, or a token.';
    show(err, true);
    return;
  }
  sessionStorage.setItem(AUTH_KEY, header);
  $('login-submit').disabled = true;
  try {
    await sql('SELECT 1', { params: MONITOR_PARAMS });
    sessionStorage.setItem(WHO_KEY, who);
    loginNeeded = false;
    $('login-password').value = '';
    $('login-token').value = '';
    show(err, false);
    show($('login'), false);
    show($('pages'), true);
    updateWho();
    route();
  } catch (e) {
    if (e instanceof SqlError && e.status !== 401) {
      // 401 already filled in the form's error; anything else is said here.
      sessionStorage.removeItem(AUTH_KEY);
      err.textContent = e.describe();
      show(err, true);
    }
  } finally {
    $('login-submit').disabled = false;
  }
}

function logout() {
  sessionStorage.removeItem(AUTH_KEY);
  sessionStorage.removeItem(WHO_KEY);
  needLogin('');
}

function updateWho() {
  const who = sessionStorage.getItem(WHO_KEY);
  $('whoami').textContent = who ? `logged in: ${who}` : '';
  show($('whoami'), Boolean(who));
  show($('logout'), Boolean(who));
}

// ---------------------------------------------------------------------------------------
// Banner and freshness.

function banner(text) {
  $('banner').textContent = text ?? '';
  show($('banner'), Boolean(text));
}

function refreshed(page, err) {
  const section = $(`page-${page}`);
  section.classList.toggle('stale', Boolean(err));
  if (err) {
    if (err instanceof SqlError && err.status === 401) return;
    banner(`Could not refresh the ${page} page: ${err instanceof SqlError ? err.describe() : err.message}` +
      (page === 'cluster' || page === 'vshards' ? ' (retrying every 5 s)' : ''));
  } else {
    banner('');
    $('updated').textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  }
}

// ---------------------------------------------------------------------------------------
// Rates from /metrics: two successive reads of this node's counters.

const METRIC_NAMES = ['shoal_ingest_rows_total', 'shoal_queries_total'];
const RATES_NOTE = document.getElementById('rates-note').textContent;
let lastSample = null;
const rates = { ingest: [], queries: [] };

/** Sums every series of each wanted metric in Prometheus' text format. */
function sumCounters(text) {
  const sums = Object.fromEntries(METRIC_NAMES.map((n) => [n, 0]));
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const end = line.search(/[{ ]/);
    const name = end < 0 ? line : line.slice(0, end);
    if (!(name in sums)) continue;
    // The value follows the label set (which may hold spaces inside quotes).
    const rest = line.slice(line.lastIndexOf('}') + 1 || end).trim().split(/\s+/);
    const v = Number(rest[0]);
    if (Number.isFinite(v)) sums[name] += v;
  }
  return sums;
}

async function sampleMetrics() {
  let text;
  try {
    const r = await fetch('metrics', {
      cache: 'no-store', credentials: 'omit', signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    text = await r.text();
  } catch (e) {
    $('rates-note').textContent = `Rates unavailable: GET metrics failed (${e.message}).`;
    lastSample = null;
    return;
  }
  $('rates-note').textContent = RATES_NOTE;
  const now = performance.now();
  const sums = sumCounters(text);
  const own = ownStatements;
  if (lastSample) {
    const dt = (now - lastSample.at) / 1000;
    const ingest = sums.shoal_ingest_rows_total - lastSample.sums.shoal_ingest_rows_total;
    const queries = sums.shoal_queries_total - lastSample.sums.shoal_queries_total -
      (own - lastSample.own);
    // A counter that went down means the node restarted: that interval says nothing.
    if (dt > 0 && ingest >= 0 && sums.shoal_queries_total >= lastSample.sums.shoal_queries_total) {
      push(rates.ingest, ingest / dt);
      push(rates.queries, Math.max(0, queries) / dt);
    }
  }
  lastSample = { at: now, sums, own };
  drawRates();
}

function push(list, v) {
  list.push(v);
  if (list.length > SPARK_SAMPLES) list.shift();
}

function drawRates() {
  const last = (l) => (l.length ? l[l.length - 1] : null);
  $('ingest-rate').textContent = fmtRate(last(rates.ingest));
  $('query-rate').textContent = fmtRate(last(rates.queries));
  sparkline($('ingest-spark'), rates.ingest);
  sparkline($('query-spark'), rates.queries);
}

function sparkline(target, values) {
  if (values.length < 2) {
    target.replaceChildren();
    return;
  }
  const max = Math.max(...values, 1e-9);
  const step = 120 / (SPARK_SAMPLES - 1);
  const x0 = 120 - step * (values.length - 1);
  const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(27 - (v / max) * 25).toFixed(1)}`);
  target.replaceChildren(svg('polyline', { points: pts.join(' ') }));
}

// ---------------------------------------------------------------------------------------
// Cluster page.

/** The link to a node's own console, only for a plain host:port address. */
function nodeLink(addr) {
  if (typeof addr !== 'string' || !/^[A-Za-z0-9.\-[\]:]+$/.test(addr)) return addr ?? '–';
  const href = `${location.protocol}//${addr}/`;
  try {
    const u = new URL(href);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return addr;
  } catch {
    return addr;
  }
  return el('a', { href, title: "this node's console" }, addr);
}

function clockCell(ms) {
  if (ms == null) return el('td', { class: 'num' }, nullCell());
  const abs = Math.abs(ms);
  // max_clock_offset_ms is 250 by default: a node past it stops serving strong reads.
  const kind = abs >= 250 ? 'bad' : abs >= 100 ? 'warn' : '';
  return el('td', { class: `num ${kind}`, title: 'its clock minus this node\'s, as last measured' },
    `${ms > 0 ? '+' : ''}${ms} ms`);
}

const NODE_COLUMNS = [
  { label: 'Node', title: 'node_id (bold: the node serving this console)' },
  { label: 'HTTP address', title: 'http_addr: its own console' },
  { label: 'Lifecycle', title: 'lifecycle, and for how long' },
  { label: 'SWIM', title: 'state: SWIM membership as this node sees it' },
  { label: 'Group 0', title: 'group0_role (term)' },
  { label: 'Replicas', title: 'replicas group 0 places on the node' },
  { label: 'Leaders', title: 'leaderships it reports' },
  { label: 'Data', title: 'data_bytes' },
  { label: 'Disk free', title: 'disk_free_bytes' },
  { label: 'CPU', title: 'cpu: share of all its cores' },
  { label: 'Clock offset', title: 'clock_offset_ms' },
  { label: 'Breaker', title: "this node's circuit breaker towards it" },
  { label: 'Version' },
  { label: 'Uptime' },
];

async function refreshCluster() {
  const nodes = await records('SELECT * FROM system.nodes ORDER BY node_id');
  let summary = null;
  try {
    [summary] = await records(
      'SELECT (SELECT count(*) FROM system.shards) AS vshards, ' +
      '(SELECT count(leader) FROM system.shards) AS led, ' +
      `(SELECT count(*) FROM system.moves WHERE state IN (${MOVE_ACTIVE.map((s) => `'${s}'`).join(', ')})) AS moving`);
  } catch (e) {
    if (e instanceof SqlError && e.status === 401) throw e;
    // Older nodes without system.moves: the cards say "–".
  }
  renderNodes(nodes);
  renderClusterSummary(nodes, summary);
}

function renderNodes(nodes) {
  const table = $('nodes-table');
  setHead(table, NODE_COLUMNS);
  const rows = [];
  for (const n of nodes) {
    const tr = el('tr', { dataset: { nodeId: String(n.node_id) }, class: n.is_self ? 'self' : null },
      el('td', { class: 'num' }, String(n.node_id), n.is_self ? ' ★' : ''),
      el('td', { class: 'mono' }, nodeLink(n.http_addr)),
      el('td', {}, n.lifecycle ? badge(n.lifecycle, LIFECYCLE_KIND[n.lifecycle] ?? 'idle') : '–',
        n.lifecycle_since ? el('span', { class: 'muted' }, ` ${since(n.lifecycle_since)}`) : null),
      el('td', { dataset: { swim: n.state ?? '' } }, n.state ? badge(n.state, SWIM_KIND[n.state] ?? 'idle') : nullCell()),
      el('td', {}, n.group0_role ?? '–', n.group0_term != null ? el('span', { class: 'muted' }, ` (${n.group0_term})`) : null),
      el('td', { class: 'num' }, fmtInt(n.replicas)),
      el('td', { class: 'num' }, fmtInt(n.leaderships)),
      el('td', { class: 'num' }, fmtBytes(n.data_bytes)),
      el('td', { class: 'num' }, fmtBytes(n.disk_free_bytes)),
      el('td', { class: 'num' }, n.cpu == null ? '–' : `${(n.cpu * 100).toFixed(1)} %`),
      clockCell(n.clock_offset_ms),
      el('td', {}, n.breaker ?? (n.is_self ? '' : '–')),
      el('td', {}, n.version ?? '–'),
      el('td', {}, fmtDuration(n.uptime_s)));
    rows.push(tr);
    const notes = [];
    if (n.decommission) notes.push(`decommission: ${n.decommission}`);
    if (n.cert_expires_at) notes.push(`TLS certificate expires ${n.cert_expires_at}`);
    if (notes.length) {
      rows.push(el('tr', { class: 'detail' }, el('td', {}), el('td', { colspan: NODE_COLUMNS.length - 1 }, notes.join(' · '))));
    }
  }
  table.tBodies[0].replaceChildren(...rows);
}

function renderClusterSummary(nodes, summary) {
  const alive = nodes.filter((n) => n.state === 'ALIVE').length;
  const active = nodes.filter((n) => n.lifecycle === 'ACTIVE').length;
  $('sum-nodes').textContent = String(nodes.length);
  $('sum-nodes-sub').textContent = `${alive} alive · ${active} active`;
  $('sum-nodes').className = `value ${alive < nodes.filter((n) => n.lifecycle !== 'DECOMMISSIONED').length ? 'warn' : ''}`;
  const leader = nodes.find((n) => n.group0_role === 'leader');
  $('sum-leader').textContent = leader ? `node ${leader.node_id}` : 'none';
  $('sum-leader').className = `value ${leader ? '' : 'bad'}`;
  $('sum-leader-sub').textContent = nodes.length && nodes[0].group0_term != null ? `term ${nodes[0].group0_term}` : '';
  if (summary) {
    const without = summary.vshards - summary.led;
    $('sum-vshards').textContent = fmtInt(summary.vshards);
    $('sum-vshards-sub').textContent = without > 0 ? `${without} without a known leader` : 'every one has a leader';
    $('sum-vshards').className = `value ${without > 0 ? 'bad' : ''}`;
    $('sum-moves').textContent = fmtInt(summary.moving);
    $('sum-moves-sub').textContent = summary.moving > 0 ? 'see Vshards' : '';
  } else {
    for (const id of ['sum-vshards', 'sum-moves']) $(id).textContent = '–';
  }
}

// ---------------------------------------------------------------------------------------
// Vshards page: group 0's placement (cluster-wide) beside this node's replicas.

/** The largest `+behind` in `2:7(+0),3:5(+2)` (where this node leads). */
function maxBehind(followers) {
  if (typeof followers !== 'string') return null;
  let max = null;
  for (const m of followers.matchAll(/\(\+(\d+)\)/g)) max = Math.max(max ?? 0, Number(m[1]));
  return max;
}

const VSHARD_COLUMNS = [
  { label: 'Vshard', title: 'vshard (its Raft group is vshard + 1)' },
  { label: 'Replicas', title: 'where group 0 places it' },
  { label: 'Leader', title: 'as this node knows it (its replica, else load reports)' },
  { label: 'Moving', title: 'the move under way, if any' },
  { label: 'Size', title: 'bytes its replicas report' },
  { label: 'Role here', title: "this node's replica: leader, follower, learner" },
  { label: 'Term' },
  { label: 'Applied', title: 'applied_index / last_log_index here' },
  { label: 'Follower lag', title: 'where this node leads: the most entries a follower is behind' },
  { label: 'Closed lag', title: 'closed_lag_ms: how far behind now this replica can answer closed reads' },
  { label: 'Hot', title: 'hot_rows, hot_bytes: the in-memory Arrow buffer' },
  { label: 'Parquet', title: 'parquet_files, parquet_bytes, parquet_rows' },
];

async function refreshVshards() {
  const shards = await records('SELECT * FROM system.shards ORDER BY vshard');
  const replicas = await records('SELECT * FROM system.replicas ORDER BY vshard');
  let moves = null;
  try {
    moves = await records('SELECT * FROM system.moves ORDER BY move_id DESC LIMIT 50');
  } catch (e) {
    if (e instanceof SqlError && e.status === 401) throw e;
  }
  const here = new Map(replicas.map((r) => [r.vshard, r]));
  const self = await selfNode();
  $('vshards-note').textContent = `Placement, leader and size are cluster-wide; "here" columns are ` +
    `the replicas of ${self != null ? `node ${self}` : 'this node'} (${replicas.length} of ${shards.length}). ` +
    'Open another node\'s console (Cluster page) for its replicas.';
  const table = $('vshards-table');
  setHead(table, VSHARD_COLUMNS);
  table.tBodies[0].replaceChildren(...shards.map((s) => {
    const r = here.get(s.vshard);
    const behind = r ? maxBehind(r.followers) : null;
    // A quiesced (idle) group's closed timestamp advances rarely: its lag is no alarm.
    const lagKind = r?.closed_lag_ms == null || r.quiesced ? 'muted'
      : r.closed_lag_ms > 10000 ? 'bad' : r.closed_lag_ms > 3000 ? 'warn' : '';
    return el('tr', { dataset: { vshard: String(s.vshard) } },
      el('td', { class: 'num' }, String(s.vshard)),
      el('td', { class: 'mono' }, s.replicas ?? '–'),
      el('td', { class: `num ${s.leader == null ? 'bad' : ''}` }, s.leader == null ? 'none' : String(s.leader)),
      el('td', { class: 'mono' }, s.moving ?? ''),
      el('td', { class: 'num' }, fmtBytes(s.bytes)),
      el('td', {}, r ? r.role : el('span', { class: 'muted' }, 'not here'),
        r?.quiesced ? el('span', { class: 'muted', title: 'idle: no heartbeats until the next write' }, ' · quiesced') : null),
      el('td', { class: 'num' }, r ? fmtInt(r.term) : ''),
      el('td', { class: 'num' }, r ? `${fmtInt(r.applied_index)} / ${fmtInt(r.last_log_index)}` : ''),
      el('td', { class: `num ${behind > 1000 ? 'warn' : ''}`, title: r?.followers ?? '' }, behind == null ? '' : `+${fmtInt(behind)}`),
      el('td', { class: `num ${lagKind}` }, r?.closed_lag_ms == null ? '' : `${fmtInt(r.closed_lag_ms)} ms`),
      el('td', { class: 'num' }, r ? `${plural(r.hot_rows, 'row')} · ${fmtBytes(r.hot_bytes)}` : ''),
      el('td', { class: 'num' }, r ? `${plural(r.parquet_files, 'file')} · ${fmtBytes(r.parquet_bytes)} · ${plural(r.parquet_rows, 'row')}` : ''));
  }));
  renderMoves(moves);
}

let selfId = null;

/** This node's id (asked once). */
async function selfNode() {
  if (selfId == null) {
    const [me] = await records('SELECT node_id FROM system.nodes WHERE is_self');
    selfId = me?.node_id ?? null;
  }
  return selfId;
}

function renderMoves(moves) {
  show($('moves-section'), Boolean(moves && moves.length));
  if (!moves || !moves.length) return;
  // Moves under way first, then the most recent.
  const sorted = [...moves].sort((a, b) =>
    (MOVE_ACTIVE.includes(b.state) - MOVE_ACTIVE.includes(a.state)) || (b.move_id - a.move_id));
  const table = $('moves-table');
  setHead(table, ['Move', 'Vshard', 'From → to', 'State', 'Progress', 'Reason', 'Attempts', 'Last error', 'Started', 'Updated']
    .map((label) => ({ label })));
  table.tBodies[0].replaceChildren(...sorted.map((m) => el('tr', { dataset: { moveId: String(m.move_id) } },
    el('td', { class: 'num' }, String(m.move_id)),
    el('td', { class: 'num' }, String(m.vshard)),
    el('td', {}, `${m.from_node} → ${m.to_node}`),
    el('td', {}, badge(m.state, MOVE_KIND[m.state] ?? 'idle')),
    el('td', { class: 'num' }, m.bytes_total ? `${fmtBytes(m.bytes_copied)} / ${fmtBytes(m.bytes_total)} (${Math.round((100 * m.bytes_copied) / m.bytes_total)} %)` : fmtBytes(m.bytes_copied)),
    el('td', {}, m.reason ?? ''),
    el('td', { class: 'num' }, fmtInt(m.attempts)),
    el('td', {}, m.last_error ?? ''),
    el('td', {}, m.started ?? ''),
    el('td', {}, m.updated ?? ''))));
}

// ---------------------------------------------------------------------------------------
// Tables page.

let tablesCache = { tables: [], columns: [] };
let selectedTable = null;

function quoteIdent(name) {
  return `"${String(name).replaceAll('"', '""')}"`;
}

async function refreshTables() {
  const tables = await records('SELECT * FROM system.tables ORDER BY table_name');
  const columns = await records('SELECT * FROM system.columns ORDER BY table_name, ordinal_position');
  tablesCache = { tables, columns };
  const table = $('tables-table');
  setHead(table, [{ label: 'Table' }, { label: 'Partition key' }, { label: 'Columns' }]);
  table.tBodies[0].replaceChildren(...tables.map((t) => el('tr', {
    class: `selectable ${t.table_name === selectedTable ? 'selected' : ''}`,
    dataset: { table: t.table_name },
    onclick: () => selectTable(t.table_name),
  }, el('td', {}, t.table_name), el('td', {}, t.partition_key ?? ''), el('td', { class: 'num' }, fmtInt(t.columns)))));
  if (!tables.length) {
    table.tBodies[0].replaceChildren(el('tr', {}, el('td', { colspan: 3, class: 'muted' },
      'No tables yet: write line protocol or CREATE TABLE.')));
  }
  if (selectedTable && !tables.some((t) => t.table_name === selectedTable)) selectedTable = null;
  renderColumns();
}

function selectTable(name) {
  selectedTable = name;
  for (const tr of $('tables-table').tBodies[0].rows) {
    tr.classList.toggle('selected', tr.dataset.table === name);
  }
  renderColumns();
}

function renderColumns() {
  const table = $('columns-table');
  const button = $('table-query');
  if (!selectedTable) {
    $('columns-title').textContent = 'Select a table';
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    show(button, false);
    return;
  }
  const cols = tablesCache.columns.filter((c) => c.table_name === selectedTable);
  $('columns-title').textContent = `Columns of ${selectedTable}`;
  setHead(table, [{ label: '#' }, { label: 'Column' }, { label: 'Type' }, { label: 'Partition key' }]);
  table.tBodies[0].replaceChildren(...cols.map((c) => el('tr', { dataset: { column: c.column_name } },
    el('td', { class: 'num' }, fmtInt(c.ordinal_position)),
    el('td', {}, c.column_name),
    el('td', { class: 'mono' }, c.column_type),
    el('td', {}, c.is_partition_key ? 'yes' : ''))));
  show(button, true);
}

function queryTable() {
  if (!selectedTable) return;
  const time = tablesCache.columns.find((c) => c.table_name === selectedTable && c.column_type === 'timestamp');
  const order = time ? ` ORDER BY ${quoteIdent(time.column_name)} DESC` : '';
  $('sql-input').value = `SELECT * FROM ${quoteIdent(selectedTable)}${order} LIMIT 100`;
  location.hash = '#sql';
  runSql();
}

// ---------------------------------------------------------------------------------------
// SQL page.

let sqlAbort = null;

const isTimeType = (t) => t === 'timestamp' || /^(Timestamp|Date)/.test(t ?? '');
const isNumberType = (t) => ['integer', 'unsigned', 'float'].includes(t) ||
  /^(U?Int(8|16|32|64)|Float(16|32|64)|Decimal)/.test(t ?? '');

async function runSql() {
  const text = $('sql-input').value;
  if (!text.trim()) return;
  sessionStorage.setItem(SQL_KEY, text);
  sqlAbort?.abort();
  const abort = new AbortController();
  sqlAbort = abort;
  const page = $('page-sql');
  page.dataset.state = 'running';
  $('sql-status').textContent = 'running…';
  show($('sql-error'), false);
  const started = performance.now();
  try {
    const res = await sql(text, { signal: abort.signal });
    if (abort.signal.aborted) return;
    const ms = Math.round(performance.now() - started);
    renderResult(res, ms);
    page.dataset.state = 'done';
  } catch (e) {
    if (abort.signal.aborted) return;
    const ms = Math.round(performance.now() - started);
    $('sql-status').textContent = `failed after ${fmtInt(ms)} ms`;
    $('sql-error').textContent = e instanceof SqlError ? e.describe() : `ERROR: ${e.message}`;
    $('sql-error').dataset.sqlstate = e.sqlstate ?? '';
    show($('sql-error'), true);
    page.dataset.state = 'error';
  } finally {
    if (sqlAbort === abort) sqlAbort = null;
  }
}

function renderResult(res, ms) {
  const grid = $('results-grid');
  const chart = $('chart');
  if (!Array.isArray(res.columns)) {
    // A command: {"command": tag, "rows": n}.
    grid.tHead.replaceChildren();
    grid.tBodies[0].replaceChildren();
    grid.dataset.rows = '0';
    show(chart, false);
    $('sql-status').textContent = `${res.command ?? 'OK'} · ${plural(res.rows ?? 0, 'row')} affected · ${fmtInt(ms)} ms`;
    return;
  }
  const { columns } = res;
  const rows = res.rows ?? [];
  const shown = rows.slice(0, GRID_ROWS_MAX);
  const numeric = columns.map((c) => isNumberType(c.type));
  setHead(grid, columns.map((c) => ({ label: c.name, type: c.type, title: `${c.name}: ${c.type}` })));
  grid.tBodies[0].replaceChildren(...shown.map((row) => el('tr', {},
    row.map((v, i) => el('td', { class: numeric[i] ? 'num' : null }, v == null ? nullCell() : String(v))))));
  grid.dataset.rows = String(rows.length);
  const cut = rows.length > shown.length ? ` (showing the first ${fmtInt(shown.length)})` : '';
  $('sql-status').textContent = `${plural(rows.length, 'row')}${cut} · ${fmtInt(ms)} ms`;
  drawChart(chart, columns, rows);
}

// ---------------------------------------------------------------------------------------
// The time-series chart: an SVG line per numeric column (per value of the first text
// column, when the result holds several series).

/** Evenly spaced round values covering [min, max]: about `count` steps of 1, 2, 2.5 or 5 × 10^k. */
function niceTicks(min, max, count) {
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => (max - min) / s <= count) ?? 10 * mag;
  if (!(step > 0 && Number.isFinite(step) && Number.isFinite(min / step))) return [min, max];
  const first = Math.floor(min / step);
  const ticks = [];
  for (let i = first; ticks.length === 0 || ticks[ticks.length - 1] < max; i += 1) {
    ticks.push(Number((i * step).toPrecision(12)));
  }
  return ticks;
}

/** Time steps a time axis may use, in ms (aligned to UTC). */
const TIME_STEPS = [1, 2, 5, 10, 15, 30].map((s) => s * 1000)
  .concat([1, 2, 5, 10, 15, 30].map((m) => m * 60000))
  .concat([1, 2, 3, 6, 12].map((h) => h * 3600000))
  .concat([1, 2, 7, 14, 30, 91, 182, 365].map((d) => d * 86400000));

/** Round UTC instants between t0 and t1, at most about `count` of them, and their step. */
function timeTicks(t0, t1, count) {
  const span = t1 - t0;
  const step = TIME_STEPS.find((s) => span / s <= count) ?? Math.ceil(span / count);
  const ticks = [];
  for (let v = Math.ceil(t0 / step) * step; v <= t1; v += step) ticks.push(v);
  return { ticks, step };
}

/** The series of a result: null when it is not a time series. */
function seriesOf(columns, rows) {
  const t = columns.findIndex((c) => isTimeType(c.type));
  const values = columns.map((c, i) => i).filter((i) => i !== t && isNumberType(columns[i].type));
  if (t < 0 || !values.length) return null;
  const label = columns.findIndex((c) => c.type === 'string');
  const byKey = new Map();
  let truncated = false;
  for (const row of rows.slice(0, CHART_POINTS_MAX)) {
    const x = parseTime(row[t]);
    if (!Number.isFinite(x)) continue;
    const group = label >= 0 ? String(row[label] ?? 'NULL') : null;
    for (const i of values) {
      const y = typeof row[i] === 'number' ? row[i] : Number.parseFloat(row[i]);
      if (!Number.isFinite(y)) continue;
      let key = columns[i].name;
      if (group != null) {
        const tag = `${columns[label].name}=${group}`;
        key = values.length === 1 ? tag : `${tag} · ${key}`;
      }
      let s = byKey.get(key);
      if (!s) {
        if (byKey.size >= SERIES_MAX) {
          truncated = true;
          continue;
        }
        s = { name: key, points: [] };
        byKey.set(key, s);
      }
      s.points.push([x, y]);
    }
  }
  const series = [...byKey.values()];
  for (const s of series) s.points.sort((a, b) => a[0] - b[0]);
  if (!series.some((s) => s.points.length)) return null;
  return { series, truncated: truncated || rows.length > CHART_POINTS_MAX, time: columns[t].name };
}

function drawChart(target, columns, rows) {
  const data = seriesOf(columns, rows);
  if (!data) {
    target.replaceChildren();
    show(target, false);
    return;
  }
  show(target, true);
  const W = Math.max(400, target.clientWidth - 16 || 900);
  const H = 280;
  const m = { l: 64, r: 28, t: 10, b: 26 };
  const all = data.series.flatMap((s) => s.points);
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) [x0, x1] = [x0 - 1000, x1 + 1000];
  if (y0 === y1) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.1, y1 + (Math.abs(y1) || 1) * 0.1];
  const yt = niceTicks(y0, y1, 5);
  [y0, y1] = [yt[0], yt[yt.length - 1]];
  const X = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);

  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'time-series chart' });
  const axis = svg('g', { class: 'axis' });
  for (const v of yt) {
    axis.append(svg('line', { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }));
    const label = svg('text', { x: m.l - 6, y: Y(v) + 4, 'text-anchor': 'end' });
    label.textContent = sigFmt.format(v);
    axis.append(label);
  }
  const xt = timeTicks(x0, x1, 7);
  for (const v of xt.ticks) {
    axis.append(svg('line', { x1: X(v), x2: X(v), y1: H - m.b, y2: H - m.b + 4 }));
    const label = svg('text', { x: X(v), y: H - 8, 'text-anchor': 'middle' });
    label.textContent = fmtTick(v, xt.step, x1 - x0);
    axis.append(label);
  }
  root.append(axis);
  data.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    if (s.points.length === 1) {
      root.append(svg('circle', { cx: X(s.points[0][0]), cy: Y(s.points[0][1]), r: 3, fill: color, dataset: { series: s.name } }));
    } else {
      root.append(svg('polyline', {
        class: 'series', stroke: color, dataset: { series: s.name },
        points: s.points.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(' '),
      }));
    }
  });
  const cursor = svg('line', { class: 'cursor', y1: m.t, y2: H - m.b, visibility: 'hidden' });
  root.append(cursor);

  const readout = el('div', { id: 'chart-readout' });
  const legend = el('div', { class: 'legend' }, data.series.map((s, i) => {
    const swatch = el('span', { class: 'swatch' });
    swatch.style.background = COLORS[i % COLORS.length];
    return el('span', { dataset: { series: s.name } }, swatch, s.name);
  }), el('span', { class: 'muted' }, `x: ${data.time} (UTC)`));
  const note = data.truncated ? el('div', { class: 'muted note' },
    `Chart limited to the first ${fmtInt(CHART_POINTS_MAX)} rows and ${SERIES_MAX} series.`) : null;
  target.replaceChildren(root, legend, readout, note ?? '');

  // Hover: the values at the nearest time.
  const times = [...new Set(all.map((p) => p[0]))].sort((a, b) => a - b);
  const lookup = data.series.map((s) => new Map(s.points));
  root.addEventListener('mousemove', (ev) => {
    const box = root.getBoundingClientRect();
    const px = ((ev.clientX - box.left) / box.width) * W;
    const want = x0 + ((px - m.l) / (W - m.l - m.r)) * (x1 - x0);
    let lo = 0;
    let hi = times.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (times[mid] < want) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(times[lo - 1] - want) < Math.abs(times[lo] - want)) lo -= 1;
    const t = times[lo];
    cursor.setAttribute('x1', X(t));
    cursor.setAttribute('x2', X(t));
    cursor.setAttribute('visibility', 'visible');
    const parts = data.series.map((s, i) => (lookup[i].has(t) ? `${s.name}=${sigFmt.format(lookup[i].get(t))}` : null))
      .filter(Boolean);
    readout.textContent = `${new Date(t).toISOString()}  ${parts.join('  ')}`;
  });
  root.addEventListener('mouseleave', () => {
    cursor.setAttribute('visibility', 'hidden');
    readout.textContent = '';
  });
}

// ---------------------------------------------------------------------------------------
// Routing and the refresh loop.

const PAGES = {
  cluster: refreshCluster,
  vshards: refreshVshards,
  tables: refreshTables,
  sql: null,
};
/** Pages that refresh by themselves. */
const LIVE = new Set(['cluster', 'vshards']);
let current = null;
/** Pages being loaded now: at most one load per page at a time. */
const loading = new Set();

function pageFromHash() {
  const name = location.hash.replace(/^#/, '');
  return name in PAGES ? name : 'cluster';
}

async function refresh(page) {
  const load = PAGES[page];
  if (!load || loading.has(page) || loginNeeded) return;
  loading.add(page);
  try {
    await load();
    refreshed(page, null);
  } catch (e) {
    refreshed(page, e);
  } finally {
    loading.delete(page);
  }
}

function route() {
  current = pageFromHash();
  for (const a of document.querySelectorAll('#tabs a')) {
    a.classList.toggle('active', a.dataset.page === current);
  }
  for (const s of document.querySelectorAll('.page')) show(s, s.dataset.page === current);
  document.title = `Shoal · ${current}`;
  if (current === 'sql') {
    $('sql-input').focus();
  } else {
    refresh(current);
  }
}

async function tick() {
  if (document.hidden || loginNeeded || !$('auto-refresh').checked) return;
  // Metrics first: the statements refreshes send land in the next interval's own count.
  await sampleMetrics();
  if (LIVE.has(current)) await refresh(current);
}

function start() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('sql-run').addEventListener('click', runSql);
  $('sql-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      runSql();
    }
  });
  $('tables-refresh').addEventListener('click', () => refresh('tables'));
  $('table-query').addEventListener('click', queryTable);
  $('sql-input').value = sessionStorage.getItem(SQL_KEY) ?? '';
  window.addEventListener('hashchange', route);
  updateWho();
  route();
  sampleMetrics();
  setInterval(tick, REFRESH_MS);
}

start();
