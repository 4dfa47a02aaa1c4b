#!/usr/bin/env python3
"""MULTI/SET/SET/EXEC throughput over raw RESP: several processes, each with its own
connections, each transaction sent as one pipelined write of four commands (no client library
in the way). Prints transactions per second (all processes together).

    scripts/bench-multi.py --ports 7379 [--tag '{t}'] [--transactions 5000] [--connections 50]

With --tag the two keys share a hash tag (one slot, one shard); without, they are random keys
spread over the shards (a cross-shard transaction on Cairn). Used by scripts/bench-txn.sh."""
import argparse
import multiprocessing
import random
import socket
import time


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    line = f.readline()
    kind = line[:1]
    if kind == b"*":
        n = int(line[1:])
        return [read_reply(f) for _ in range(max(n, 0))]
    if kind == b"$":
        n = int(line[1:])
        if n >= 0:
            f.read(n + 2)
        return None
    if kind == b"-":
        raise RuntimeError(line.decode().strip())
    return line


def worker(args):
    port, tag, count, connections, seed = args
    rng = random.Random(seed)
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append((s, s.makefile("rb")))
    done = 0
    i = 0
    while done < count:
        # One transaction in flight per connection: send on all, then read all.
        batch = socks[: min(len(socks), count - done)]
        for s, _ in batch:
            a, b = rng.randrange(1_000_000), rng.randrange(1_000_000)
            s.sendall(
                command("MULTI")
                + command("SET", f"{tag}a:{a}", "v")
                + command("SET", f"{tag}b:{b}", "v")
                + command("EXEC")
            )
        for _, f in batch:
            for _ in range(3):
                read_reply(f)
            exec_reply = read_reply(f)
            assert isinstance(exec_reply, list) and len(exec_reply) == 2, exec_reply
        done += len(batch)
        i += 1
    for s, _ in socks:
        s.close()
    return done


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ports", type=int, nargs="+", required=True)
    p.add_argument("--tag", default="")
    p.add_argument("--transactions", type=int, default=5000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--processes", type=int, default=2)
    a = p.parse_args()
    procs = a.processes * len(a.ports)
    jobs = [
        (
            a.ports[i % len(a.ports)],
            a.tag,
            a.transactions // procs,
            max(1, a.connections // procs),
            i,
        )
        for i in range(procs)
    ]
    start = time.monotonic()
    with multiprocessing.Pool(procs) as pool:
        total = sum(pool.map(worker, jobs))
    print(round(total / (time.monotonic() - start)))


if __name__ == "__main__":
    main()
