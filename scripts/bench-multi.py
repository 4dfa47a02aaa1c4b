#!/usr/bin/env python3
"""MULTI/SET/SET/EXEC throughput over raw RESP: several processes, each with its own
connections, each transaction sent as one pipelined write of four commands (no client library
in the way). Prints transactions per second (all processes together).

    scripts/bench-multi.py --ports 7379 [--tag '{t}'] [--transactions 5000] [--connections 50]

With --tag the two keys share a hash tag (one slot, one shard); without, they are random keys
spread over the shards (a cross-shard transaction on Cairn). Used by scripts/bench-txn.sh.

With --bank ACCOUNTS it runs the bank workload instead: each transfer is WATCH a b, MGET a b,
MULTI, SET a, SET b, EXEC between two random accounts of ACCOUNTS (started at 100 each),
retried while EXEC answers the null array; it prints committed transfers per second and the
share of EXECs that a WATCH aborted, then checks that the accounts still hold the total."""
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


def bank_worker(args):
    port, accounts, count, seed = args
    rng = random.Random(seed)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    done = aborted = 0
    while done < count:
        a, b = rng.sample(range(accounts), 2)
        ka, kb = f"acct:{a}", f"acct:{b}"
        s.sendall(command("WATCH", ka, kb) + command("MGET", ka, kb))
        read_reply(f)
        f.readline()  # *2
        balances = []
        for _ in range(2):
            n = int(f.readline()[1:])
            balances.append(int(f.read(n + 2)[:n]))
        amount = rng.randrange(1, 10)
        s.sendall(
            command("MULTI")
            + command("SET", ka, str(balances[0] - amount))
            + command("SET", kb, str(balances[1] + amount))
            + command("EXEC")
        )
        for _ in range(3):
            read_reply(f)
        if read_reply(f):
            done += 1
        else:
            aborted += 1
    s.close()
    return done, aborted


def bank(a):
    s = socket.create_connection(("127.0.0.1", a.ports[0]))
    f = s.makefile("rb")
    args = ["MSET"]
    for i in range(a.bank):
        args += [f"acct:{i}", "100"]
    s.sendall(command(*args))
    read_reply(f)
    procs = a.connections
    jobs = [(a.ports[i % len(a.ports)], a.bank, a.transactions // procs, i) for i in range(procs)]
    start = time.monotonic()
    with multiprocessing.Pool(procs) as pool:
        results = pool.map(bank_worker, jobs)
    elapsed = time.monotonic() - start
    done = sum(r[0] for r in results)
    aborted = sum(r[1] for r in results)
    s.sendall(command("MGET", *[f"acct:{i}" for i in range(a.bank)]))
    f.readline()
    total = 0
    for _ in range(a.bank):
        n = int(f.readline()[1:])
        total += int(f.read(n + 2)[:n])
    assert total == 100 * a.bank, f"the accounts hold {total}, not {100 * a.bank}"
    print(round(done / elapsed), round(aborted / max(1, done + aborted), 2))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ports", type=int, nargs="+", required=True)
    p.add_argument("--tag", default="")
    p.add_argument("--transactions", type=int, default=5000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--bank", type=int, default=0)
    a = p.parse_args()
    if a.bank:
        return bank(a)
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
