"""What the health poll costs while messages flow.

The poll wakes every ``health_check_interval`` (0.1 s); while frames arrive,
traffic already proves liveness and it returns after one comparison.  This
measures its share of the client's CPU time at a publishing rate of about
50 000 msg/s, two ways, in interleaved rounds:

* **instrumented**: the thread CPU time spent inside the poll's own
  iterations (wake-up to sleep), summed, against the process CPU time of the
  whole run;
* **A/B**: process CPU time per message with the poll at 0.1 s and with the
  poll effectively off (1 hour), same workload.

Needs a broker: ``AMQP_URL=... python benchmarks/bench_health_poll.py``, or
``python -m trio_lavin.testing rabbitmq exec -- python benchmarks/bench_health_poll.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

import trio_lavin as lavin
from trio_lavin._robust import _client as client_module

RATE = 50_000
BATCH = 500  # messages per 10 ms tick


class PollMeter:
    """Wraps the client's health poll and sums its CPU time per iteration."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wakeups = 0

    def install(self, client: lavin.Client) -> None:
        original = client._health_poll
        meter = self

        async def metered() -> None:
            interval = client.config.health_check_interval
            while True:
                await trio.sleep(interval)
                start = time.thread_time()
                connection = client._connection
                if connection is not None and connection.is_open:
                    now = trio.current_time()
                    quiet = now - connection.last_received >= interval
                    if quiet or connection.sending.write_started is not None:
                        connection.health_problem(now, client.config.write_timeout)
                meter.cpu += time.thread_time() - start
                meter.wakeups += 1

        client._health_poll = metered  # type: ignore[method-assign]
        del original


async def run(url: str, seconds: float, interval: float) -> tuple[float, int, PollMeter]:
    meter = PollMeter()
    config = lavin.Config(health_check_interval=interval, buffer_size=20_000)
    original_init = client_module.Client.__init__

    def init(self: lavin.Client, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        meter.install(self)

    client_module.Client.__init__ = init  # type: ignore[method-assign]
    try:
        async with lavin.open_client(url, config) as client:
            queue = (await client.declare_queue("", exclusive=True)).queue
            producer = client.producer(queue, mode=lavin.PublishMode.FIRE_AND_FORGET)
            await client.wait_connected()
            cpu_start = time.process_time()
            sent = 0
            deadline = trio.current_time() + seconds
            next_tick = trio.current_time()
            while trio.current_time() < deadline:
                for _ in range(BATCH):
                    producer.publish_nowait(b"x" * 16)
                sent += BATCH
                next_tick += BATCH / RATE
                await trio.sleep_until(next_tick)
            await producer.drain()
            cpu = time.process_time() - cpu_start
    finally:
        client_module.Client.__init__ = original_init  # type: ignore[method-assign]
    return cpu, sent, meter


async def main(url: str, seconds: float, rounds: int) -> None:
    shares, on_costs, off_costs = [], [], []
    for _ in range(rounds):
        cpu, sent, meter = await run(url, seconds, 0.1)
        shares.append(meter.cpu / cpu)
        on_costs.append(cpu / sent)
        cpu_off, sent_off, _ = await run(url, seconds, 3600.0)
        off_costs.append(cpu_off / sent_off)
        print(
            f"poll on: {sent / seconds:,.0f} msg/s, {cpu / sent * 1e6:.2f} us CPU/msg, "
            f"{meter.wakeups} wake-ups costing {meter.cpu * 1e3:.2f} ms "
            f"({meter.cpu / cpu:.4%} of {cpu:.2f} s CPU) | poll off: "
            f"{cpu_off / sent_off * 1e6:.2f} us CPU/msg"
        )
    on, off = statistics.median(on_costs), statistics.median(off_costs)
    print(
        f"median instrumented share {statistics.median(shares):.4%}; "
        f"A/B difference {(on - off) / off:+.2%} (noise included)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="CPU share of the health poll under load")
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.url, args.seconds, args.rounds)
