"""The demo's settings, declared once (scaler.options): its flags, variables, defaults and help.

Apart from run.py so that the CLI can list the demo's flags without loading the demo (and its extras).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaler.commands.plot_files import plot_file
from scaler.options import checked, number, option_for, positive, setting, split_address
from scaler.service.server import ServerSettings


@dataclass(frozen=True)
class DemoSettings:
    grpc_address: str = setting(
        "127.0.0.1:6000",
        flag="--grpc-address",
        parse=checked(split_address),
        metavar="HOST:PORT",
        help="Where the demo's scaler listens (use port 0 for any free port).",
    )
    duration: float = setting(
        0.0,
        flag="--duration",
        parse=number(float),
        metavar="SECONDS",
        help="Stop after this long; 0 runs until Ctrl-C.",
    )
    metrics_address: str = setting(
        "127.0.0.1:8080",
        flag="--metrics-address",
        parse=checked(split_address),
        metavar="HOST:PORT",
        help=option_for(ServerSettings, "metrics_address").help,
    )
    seed: int = setting(1, flag="--seed", parse=number(int), metavar="N", help="Seed of the synthetic workload.")
    cooldown: float = setting(
        10.0,
        flag="--cooldown",
        parse=positive(float),
        metavar="SECONDS",
        help="The simulated ScaledObjects' cooldownPeriod (shrunk from KEDA's 300 s so a short run scales to zero).",
    )
    plot: str | None = setting(
        None,
        flag="--plot",
        parse=plot_file,
        metavar="FILE",
        help="At the end, write demand against workers and replicas over time to FILE (.png, .svg or .html).",
    )
    poll_interval: float = setting(
        2.0,
        flag="--poll-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="The simulated ScaledObjects' pollingInterval: how often the KEDA-shaped client polls.",
    )
