"""The ceiling: the least an aiohttp + uvloop service can do per request.

Every GET gets the same constant JSON body, of the same size as ours, from the same number of
worker processes sharing one listening socket. Nothing our service does beyond that is free.

    python -m tests.benchmark.ceiling --port 8100 --workers 2 --body-size 267 --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket

import uvloop
from aiohttp import web


def serve(sock: socket.socket, body: bytes, loop: str) -> None:
    async def constant(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", constant)
    event_loop = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
    web.run_app(app, sock=sock, access_log=None, print=None, loop=event_loop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--body-size", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    body = b'{"x":"' + b"x" * max(0, args.body_size - 8) + b'"}'
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            serve(sock, body, args.loop)
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(pid, signal.SIGTERM) for pid in children])
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
