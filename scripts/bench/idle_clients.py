#!/usr/bin/env python3
"""Opens many idle PostgreSQL client connections and holds them (used by scripts/bench-idle.sh).

Each connection sends a StartupMessage (protocol 3.0) for a user the proxy trusts, reads until
ReadyForQuery, then sits idle. Standard library only.

Output on stdout (one line each, flushed):
  READY ok=<n> failed=<n> seconds=<login time>      once every login has finished or failed
  ERRORS <count> <message>                           the most common login errors, if any
  STATUS alive=<n> closed=<n>                        on SIGUSR1: connections still open
  DONE alive=<n> closed=<n>                          on SIGTERM/SIGINT, before closing them all
Progress goes to stderr.
"""

import argparse
import asyncio
import collections
import signal
import struct
import sys
import time

PROTOCOL_3 = 196608


def error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}"


async def login(host, port, user, database, timeout):
    async def run():
        reader, writer = await asyncio.open_connection(host, port)
        params = b"".join(
            k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in (("user", user), ("database", database), ("application_name", "bench-idle"))
        ) + b"\0"
        writer.write(struct.pack("!ii", 8 + len(params), PROTOCOL_3) + params)
        await writer.drain()
        while True:
            header = await reader.readexactly(5)
            tag, length = header[:1], struct.unpack("!i", header[1:])[0]
            body = await reader.readexactly(length - 4)
            if tag == b"Z":
                return reader, writer
            if tag == b"E":
                writer.close()
                raise RuntimeError(error_text(body))
            if tag == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                writer.close()
                code = struct.unpack("!i", body[:4])[0]
                raise RuntimeError(f"proxy asked for a password (auth code {code}); the user needs auth = \"trust\"")

    return await asyncio.wait_for(run(), timeout)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--database", default="postgres")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=200, help="logins in flight at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="per login, seconds")
    args = parser.parse_args()

    ok = failed = closed = 0
    errors = collections.Counter()
    writers = []
    gate = asyncio.Semaphore(args.concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def report(what):
        print(f"{what} alive={ok - closed} closed={closed}", flush=True)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: report("STATUS"))

    async def client():
        nonlocal ok, failed, closed
        async with gate:
            try:
                reader, writer = await login(args.host, args.port, args.user, args.database, args.timeout)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                failed += 1
                errors[str(e) or type(e).__name__] += 1
                return
        ok += 1
        writers.append(writer)
        try:
            # Idle: the proxy should send nothing; EOF means it closed us.
            await reader.read(1)
        except Exception:  # noqa: BLE001
            pass
        closed += 1

    started = time.monotonic()
    tasks = [asyncio.create_task(client()) for _ in range(args.count)]

    async def progress():
        while ok + failed < args.count:
            await asyncio.sleep(1)
            print(f"idle_clients: {ok} logged in, {failed} failed", file=sys.stderr, flush=True)

    progress_task = asyncio.create_task(progress())
    while ok + failed < args.count and not stop.is_set():
        await asyncio.sleep(0.05)
    progress_task.cancel()
    print(f"READY ok={ok} failed={failed} seconds={time.monotonic() - started:.1f}", flush=True)
    for message, count in errors.most_common(5):
        print(f"ERRORS {count} {message}", flush=True)

    await stop.wait()
    report("DONE")
    for writer in writers:
        writer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
