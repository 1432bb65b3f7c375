// A scripted Anthropic Messages API for scripts/container-smoke.sh, run with the
// image's own Node.js: Claude Code (ANTHROPIC_BASE_URL pointing here) is told to
// write hello.txt with the line "hello", and once the tool result is back, ends its
// turn. GET /_seen answers how many /v1/messages requests arrived, so the script can
// tell that the real Claude Code did the work. Node's standard library only.
import http from 'node:http';

const port = Number(process.env.PORT || 8081);
const model = 'claude-sonnet-4-5-20250929';
let seen = 0;

function workingDirectory(body) {
  const system = JSON.stringify(body.system ?? '');
  const m = system.match(/Primary working directory: (.*?)\\n/);
  return m ? m[1] : null;
}

function reply(body) {
  const toolResultBack = (body.messages ?? []).some(
    (m) => Array.isArray(m.content) && m.content.some((c) => c.type === 'tool_result'),
  );
  if (toolResultBack) {
    return [[{ type: 'text', text: 'hello.txt now holds hello.' }], 'end_turn'];
  }
  const dir = workingDirectory(body) ?? '.';
  return [
    [{
      type: 'tool_use', id: 'toolu_hello', name: 'Write',
      input: { file_path: `${dir}/hello.txt`, content: 'hello\n' },
    }],
    'tool_use',
  ];
}

function stream(name, content, stop) {
  const events = [['message_start', {
    type: 'message_start',
    message: {
      id: 'msg_scripted', type: 'message', role: 'assistant', model: name, content: [],
      stop_reason: null, stop_sequence: null, usage: { input_tokens: 1000, output_tokens: 1 },
    },
  }]];
  content.forEach((block, index) => {
    const [start, delta] = block.type === 'text'
      ? [{ type: 'text', text: '' }, { type: 'text_delta', text: block.text }]
      : [{ type: 'tool_use', id: block.id, name: block.name, input: {} },
        { type: 'input_json_delta', partial_json: JSON.stringify(block.input) }];
    events.push(['content_block_start', { type: 'content_block_start', index, content_block: start }]);
    events.push(['content_block_delta', { type: 'content_block_delta', index, delta }]);
    events.push(['content_block_stop', { type: 'content_block_stop', index }]);
  });
  events.push(['message_delta', {
    type: 'message_delta', delta: { stop_reason: stop, stop_sequence: null },
    usage: { output_tokens: 50 },
  }]);
  events.push(['message_stop', { type: 'message_stop' }]);
  return events.map(([e, d]) => `event: ${e}\ndata: ${JSON.stringify(d)}\n\n`).join('');
}

http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const path = req.url.split('?')[0];
    if (req.method === 'GET' && path === '/_seen') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ messages: seen }));
      return;
    }
    if (req.method === 'POST' && path === '/v1/messages/count_tokens') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ input_tokens: 1000 }));
      return;
    }
    if (req.method !== 'POST' || path !== '/v1/messages') {
      console.error(`anthropic-stub: ${req.method} ${req.url} answered 404`);
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ type: 'error', error: { type: 'not_found_error', message: 'not found' } }));
      return;
    }
    seen += 1;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400);
      res.end();
      return;
    }
    const name = body.model || model;
    const [content, stop] = reply(body);
    if (body.stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(stream(name, content, stop));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      id: 'msg_scripted', type: 'message', role: 'assistant', model: name, content,
      stop_reason: stop, stop_sequence: null, usage: { input_tokens: 1000, output_tokens: 50 },
    }));
  });
}).listen(port, '0.0.0.0', () => console.error(`anthropic-stub listening on ${port}`));
