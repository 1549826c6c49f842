"""``status``, ``table`` and ``stop``: the commands that ask the running daemon.

They need a daemon (found as :mod:`.clidaemon` says) and exit with status 3 when there is
none or it does not answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .clidaemon import call, choice, daemon_options, read, require_daemon, wait_for_exit
from .clierrors import CommandFailed


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def _size(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def status_lines(status: dict[str, Any]) -> list[str]:
    return [
        f"node      {status['node_id']}",
        f"state     {status['state']} (up {_duration(status['uptime_s'])}, pid {status['pid']})",
        f"udp       {status['udp_address']}",
        f"api       {status['api_url']} (page: /, metrics: /metrics)",
        f"data dir  {status['data_dir'] or '- (in memory)'}",
        f"contacts  {status['contacts']} ({status['stale']} failing, "
        f"{status['replacements']} waiting as replacements)",
        f"records   {status['records']} ({_size(status['records_bytes'])})",
        f"queries   {status['queries_in_flight']} in flight",
        *_reachability_lines(status.get("reachability")),
    ]


def _reachability_lines(reach: dict[str, Any] | None) -> list[str]:
    """``mode`` and ``external`` lines (absent from an older daemon's answer)."""
    if not reach:
        return []
    probes = f"{reach['probes_ok']}/{reach['probes']} probe rounds ok"
    how = "fixed by --mode" if reach["fixed"] else probes
    lines = [f"mode      {reach['mode']} for {_duration(reach['since_s'])} ({how})"]
    for family, address in reach["external"].items():
        nat_class = reach["nat_class"].get(family, "unknown")
        if address is not None or nat_class != "unknown":
            lines.append(f"external  {address or '?'} ({family}, NAT class {nat_class})")
    return lines


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON as it is.")
@daemon_options
def status_command(
    as_json: bool, api_url: str | None, no_daemon: bool, daemon_data_dir: Path | None
) -> None:
    """Show the running daemon's node: id, state, addresses, contacts, records."""
    client = require_daemon(choice(api_url, no_daemon, daemon_data_dir))
    status = read(client, "status")
    if as_json:
        import json  # noqa: PLC0415

        click.echo(json.dumps(status, indent=2))
        return
    for line in status_lines(status):
        click.echo(line)


@click.command("table")
@daemon_options
def table_command(api_url: str | None, no_daemon: bool, daemon_data_dir: Path | None) -> None:
    """Show the running daemon's routing table, bucket by bucket (index = bits in common
    with the node's id), with each contact's smoothed RTT and failures."""
    client = require_daemon(choice(api_url, no_daemon, daemon_data_dir))
    data = read(client, "routing-table")
    buckets = data["buckets"]
    total = sum(len(b["contacts"]) for b in buckets)
    table = Table(title=f"routing table of {data['node_id'][:16]}…: {total} contacts")
    for name, justify in (
        ("bucket", "right"),
        ("node id", "left"),
        ("address", "left"),
        ("rtt ms", "right"),
        ("last seen", "right"),
        ("failures", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for bucket in buckets:
        head = f"{bucket['index']} ({len(bucket['contacts'])}/{data['k']}"
        head += f", +{bucket['replacements']} spare)" if bucket["replacements"] else ")"
        for i, contact in enumerate(bucket["contacts"]):
            srtt = contact["srtt_ms"]
            table.add_row(
                head if i == 0 else "",
                contact["node_id"][:16],
                contact["address"],
                "-" if srtt is None else f"{srtt:.2f}",
                f"{contact['last_seen_s']:.0f} s",
                str(contact["failures"]),
            )
        if not bucket["contacts"]:
            table.add_row(head, "", "", "", "", "")
    _console().print(table)


@click.command("stop")
@daemon_options
def stop_command(api_url: str | None, no_daemon: bool, daemon_data_dir: Path | None) -> None:
    """Stop the running daemon as SIGTERM would (it hands its records on first) and wait
    until it has exited."""
    opts = choice(api_url, no_daemon, daemon_data_dir)
    client = require_daemon(opts)
    pid = int(read(client, "status")["pid"])
    call(client, "shutdown", {})
    if not wait_for_exit(pid):
        raise CommandFailed(f"the daemon (pid {pid}) is still running after the wait")
    click.echo(f"daemon pid {pid} stopped")
