#!/usr/bin/env python3
"""The GraphQL benchmark's backends: users, orders and catalog on one loopback port.

    python3 bench/graphql/backend.py PORT

Why not the gateway's own demo backends: `gateway demo` runs them in the gateway's process, so
the gateway's CPU time and pinning could not be measured apart, and the demo's
`/products/recommended` makes every fourth call take 1 s on purpose.

Plain asyncio with a hand-written HTTP/1.1 keep-alive loop (stdlib only, no coroutine per request):
fixed JSON bodies, and `?delay_ms=N` answers after N ms (a timer, not a sleeping thread; asyncio's
timers fire up to about 1 ms late, since epoll waits in whole milliseconds: graphql.sh measures the
backend alone and reports the gateway's latency against that too). Paths:

    GET /users/u1              {"id": "u1", ...}
    GET /orders?userId=u1      [order, order]
    GET /products/recommended  [product, product, product]
    GET /stats                 {"/users": n, "/orders": n, "/products": n}: calls so far, per service
    GET /health                {"status": "ok"}

Requests on one connection are answered in order (pipelining is handled, though hyper's client
does not pipeline).
"""

import asyncio
import collections
import json
import sys
from urllib.parse import parse_qs, urlsplit

USER = {"id": "u1", "name": "Ada Lovelace", "email": "ada@example.com",
        "createdAt": "2024-01-05T10:00:00Z"}
ORDERS = [
    {"id": "o1", "userId": "u1", "status": "paid", "totalCents": 2598, "currency": "USD",
     "createdAt": "2024-10-01T12:00:00Z",
     "items": [{"productId": "p1", "quantity": 2}, {"productId": "p3", "quantity": 1}]},
    {"id": "o2", "userId": "u1", "status": "shipped", "totalCents": 12999, "currency": "USD",
     "createdAt": "2024-10-15T09:30:00Z", "items": [{"productId": "p2", "quantity": 1}]},
]
PRODUCTS = [
    {"id": "p4", "name": "Desk lamp", "priceCents": 3499, "currency": "USD", "inStock": True},
    {"id": "p5", "name": "Notebook", "priceCents": 599, "currency": "USD", "inStock": True},
    {"id": "p6", "name": "Fountain pen", "priceCents": 4999, "currency": "USD", "inStock": False},
]


def response(status, body):
    raw = json.dumps(body, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(raw)}\r\n\r\n").encode()
    return head + raw


# Prebuilt responses: the backend should cost as little CPU as possible per call.
RESPONSES = {
    "/users/u1": response("200 OK", USER),
    "/orders": response("200 OK", ORDERS),
    "/products/recommended": response("200 OK", PRODUCTS),
    "/health": response("200 OK", {"status": "ok"}),
}
NOT_FOUND = response("404 Not Found", {"error": "not found"})
BAD_REQUEST = response("400 Bad Request", {"error": "bad request"})
STATS = {"/users": 0, "/orders": 0, "/products": 0}


class Conn(asyncio.Protocol):
    def __init__(self):
        self.buf = b""
        self.transport = None
        # Responses in request order: one-item lists holding bytes, or None while the delay runs.
        self.queue = collections.deque()
        self.close_after = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.reply_now(BAD_REQUEST, close=True)
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            if len(parts) != 3:
                self.reply_now(BAD_REQUEST, close=True)
                return
            self.handle(parts[1], close)

    def handle(self, target, close):
        url = urlsplit(target)
        path = url.path
        if path == "/stats":
            self.reply_now(response("200 OK", STATS), close)
            return
        body = RESPONSES.get(path, NOT_FOUND)
        service = "/" + path.split("/")[1] if path.count("/") >= 1 else path
        if service in STATS:
            STATS[service] += 1
        delay = 0.0
        if url.query:
            try:
                delay = int(parse_qs(url.query).get("delay_ms", ["0"])[0]) / 1000.0
            except ValueError:
                body = BAD_REQUEST
        if delay <= 0:
            self.reply_now(body, close)
            return
        cell = [None]
        self.queue.append(cell)
        asyncio.get_running_loop().call_later(delay, self.fill, cell, body, close)

    def reply_now(self, body, close=False):
        self.queue.append([body])
        if close:
            self.close_after = True
        self.flush()

    def fill(self, cell, body, close):
        cell[0] = body
        if close:
            self.close_after = True
        self.flush()

    def flush(self):
        queue = self.queue
        while queue and queue[0][0] is not None:
            out = queue.popleft()[0]
            if self.transport is not None:
                self.transport.write(out)
        if not queue and self.close_after and self.transport is not None:
            self.transport.close()


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
