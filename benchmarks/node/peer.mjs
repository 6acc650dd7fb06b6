// The Node half of the `ws` peer (benchmarks/node_peer.py starts it; see its docstring
// for the whole design and the pipe protocol).
//
//   node peer.mjs --host 127.0.0.1 --port 0 [--no-compression] [--max-buffered BYTES]
//
// This process owns the listening socket: WebSocket upgrades on /v1/stream with the
// `ws` library, `GET /metrics` with Node's http server on the same port. It builds no
// message: the launcher (the parent, on the other end of stdin and stdout) runs the
// market, keeps the books, answers the requests and encodes every message once per
// group; this process fans each one out with `ws.send(payload, {binary: true})`.
//
// stdin, from the launcher, is a stream of frames:
//   u32 length of the rest (big-endian) | u8 kind | body
//   'M' u32 group,  payload          a message for every client in the group
//   'R' u32 client, payload          a message for one client (a reply)
//   'J' u32 client, u32 group, first the client joins the group: `first` (a snapshot,
//                                    a bbo, or nothing) is sent to it, then it gets the
//                                    group's messages; the pipe's order keeps them in line
//   'X' u32 scrape, f64 cpu, f64 events   the launcher's figures for one /metrics scrape
// stdout, to the launcher, is one JSON object a line:
//   {"op":"listening","port":P}  {"op":"request","client":C,"data":"..."}
//   {"op":"closed","client":C}   {"op":"metrics","scrape":S}
// The end of stdin (or a broken stdout) means the launcher is gone: close every
// connection (1001) and exit. So do SIGINT and SIGTERM.

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const STREAM_PATH = '/v1/stream';
const MAX_REQUEST_BYTES = 64 * 1024; // larger closes with 1009, as tickwire
const CLOSE_GRACE_MS = 1000; // time given to closing handshakes on shutdown
const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
const KIND = { M: 0x4d, R: 0x52, J: 0x4a, X: 0x58 };

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'max-buffered': { type: 'string', default: String(4 << 20) },
    'no-compression': { type: 'boolean', default: false },
  },
});
const maxBuffered = Number(args['max-buffered']);

const stats = { messagesSent: 0, lagEvents: 0, open: 0 };
const clients = new Map(); // client number -> Client
const groups = new Map(); // group number -> Set<Client>
const scrapes = new Map(); // scrape number -> http.ServerResponse waiting for 'X'
let lastClient = 0;
let lastScrape = 0;
let stopping = false;

class Client {
  constructor(number, ws) {
    this.number = number;
    this.ws = ws;
    this.groups = [];
  }
}

function tell(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

// Send one message; a client with more than maxBuffered bytes unsent is dropped.
function send(client, payload) {
  const ws = client.ws;
  if (ws.readyState !== ws.OPEN) return; // closing: its 'close' event is on the way
  ws.send(payload, { binary: true });
  stats.messagesSent += 1;
  if (ws.bufferedAmount > maxBuffered) {
    stats.lagEvents += 1;
    ws.terminate();
  }
}

// -- the pipe from the launcher -------------------------------------------------------

function handle(frame) {
  const kind = frame[0];
  if (kind === KIND.M) {
    const members = groups.get(frame.readUInt32BE(1));
    if (members === undefined) return; // the group's last client left meanwhile
    const payload = frame.subarray(5);
    for (const client of members) send(client, payload);
  } else if (kind === KIND.R) {
    const client = clients.get(frame.readUInt32BE(1));
    if (client !== undefined) send(client, frame.subarray(5));
  } else if (kind === KIND.J) {
    const client = clients.get(frame.readUInt32BE(1));
    if (client === undefined) return; // gone before the launcher saw it go
    const number = frame.readUInt32BE(5);
    if (frame.length > 9) send(client, frame.subarray(9));
    let members = groups.get(number);
    if (members === undefined) groups.set(number, (members = new Set()));
    members.add(client);
    client.groups.push(number);
  } else if (kind === KIND.X) {
    const scrape = frame.readUInt32BE(1);
    const response = scrapes.get(scrape);
    scrapes.delete(scrape);
    response?.writeHead(200, { 'Content-Type': METRICS_CONTENT_TYPE });
    response?.end(metrics(frame.readDoubleBE(5), frame.readDoubleBE(13)));
  } else {
    throw new Error(`unknown frame kind ${kind} from the launcher`);
  }
}

let pending = Buffer.alloc(0);
process.stdin.on('data', (chunk) => {
  const data = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  let at = 0;
  while (data.length - at >= 4) {
    const end = at + 4 + data.readUInt32BE(at);
    if (end > data.length) break;
    handle(data.subarray(at + 4, end));
    at = end;
  }
  pending = data.subarray(at);
});
process.stdin.on('end', shutdown);
process.stdout.on('error', shutdown);
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);

// -- /metrics -----------------------------------------------------------------------

function metrics(launcherCpu, events) {
  const { user, system } = process.cpuUsage(); // microseconds, every thread (zlib too)
  const series = [
    ['process_cpu_seconds_total', 'counter', (user + system) / 1e6 + launcherCpu,
      'User and system CPU time of this Node process and its Python launcher, in seconds'],
    ['tickwire_events_total', 'counter', events, 'Feed events released'],
    ['tickwire_messages_sent_total', 'counter', stats.messagesSent,
      'Messages sent, each counted once per client it was sent to'],
    ['tickwire_lag_events_total', 'counter', stats.lagEvents,
      `Clients disconnected for having more than ${maxBuffered} bytes unsent`],
    ['tickwire_open_connections', 'gauge', stats.open, 'Open WebSocket connections'],
  ];
  return series.map(([name, type, value, help]) =>
    `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${value}\n`).join('');
}

// -- the listening socket -----------------------------------------------------------

const wss = new WebSocketServer({
  noServer: true,
  clientTracking: false,
  maxPayload: MAX_REQUEST_BYTES,
  perMessageDeflate: !args['no-compression'], // the library's defaults when on
});

function connected(ws) {
  const client = new Client(++lastClient, ws);
  clients.set(client.number, client);
  stats.open += 1;
  ws.on('message', (data) => tell({ op: 'request', client: client.number, data: data.toString() }));
  ws.on('error', () => {}); // 'close' follows
  ws.on('close', () => {
    clients.delete(client.number);
    stats.open -= 1;
    for (const number of client.groups) {
      const members = groups.get(number);
      members?.delete(client);
      if (members?.size === 0) groups.delete(number);
    }
    if (!stopping) tell({ op: 'closed', client: client.number });
  });
}

function pathOf(request) {
  return request.url.split('?', 1)[0];
}

const server = createServer((request, response) => {
  const path = pathOf(request);
  if (path === '/metrics' && request.method === 'GET' && !stopping) {
    scrapes.set(++lastScrape, response);
    tell({ op: 'metrics', scrape: lastScrape });
    return;
  }
  const [status, body] = path === STREAM_PATH
    ? [426, 'this endpoint speaks WebSocket only\n']
    : [404, `no such path: ${path}\n`];
  response.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  response.end(body);
});

server.on('upgrade', (request, socket, head) => {
  socket.on('error', () => {});
  if (pathOf(request) !== STREAM_PATH || stopping) {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(request, socket, head, connected);
});

server.on('error', (error) => {
  console.error(`peer.mjs: ${error.message}`);
  process.exit(1);
});

server.listen({ host: args.host, port: Number(args.port), backlog: 1024 }, () => {
  tell({ op: 'listening', port: server.address().port });
});

function shutdown() {
  if (stopping) return;
  stopping = true;
  server.close();
  for (const client of clients.values()) client.ws.close(1001, 'server shutting down');
  for (const response of scrapes.values()) response.destroy();
  setTimeout(() => process.exit(0), CLOSE_GRACE_MS).unref();
}
