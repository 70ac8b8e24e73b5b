"""The `tlsstorm` command: one subcommand per service or job; the work lives elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from tlsstorm import __version__
from tlsstorm.common.config import (
    CollectorSettings,
    MeterSettings,
    ReceiverSettings,
    SenderSettings,
    add_flags,
    load_settings,
)


def _serve(service, run=asyncio.run) -> None:
    from tlsstorm.common.serve import run_until_signalled

    run(run_until_signalled(service))


def _receiver(flags: argparse.Namespace) -> None:
    from tlsstorm.common.telemetry import tracer_provider
    from tlsstorm.receiver.app import ReceiverService

    settings = load_settings(ReceiverSettings, flags, "tlsstorm receiver")
    _serve(ReceiverService(settings, tracer_provider("tlsstorm-receiver")))


def _sender(flags: argparse.Namespace) -> None:
    from tlsstorm.common.telemetry import tracer_provider
    from tlsstorm.sender.app import SenderService

    settings = load_settings(SenderSettings, flags, "tlsstorm sender")
    # The generator on libuv's loop: a third less CPU per message than asyncio's own (issue
    # 12). The receiver stays on asyncio's loop, like the Python mail servers it stands for
    # (and its CPU meter hooks that loop).
    import uvloop

    from tlsstorm.common.heap import freeze_startup_objects

    try:
        service = SenderService(settings, tracer_provider("tlsstorm-sender"))
    except OSError as error:
        raise SystemExit(f"tlsstorm sender: {error}") from None
    freeze_startup_objects()
    _serve(service, uvloop.run)


def _collector(flags: argparse.Namespace) -> None:
    from tlsstorm.collector.app import CollectorService

    _serve(CollectorService(load_settings(CollectorSettings, flags, "tlsstorm collector")))


def _meter(flags: argparse.Namespace) -> None:
    from tlsstorm.common.telemetry import tracer_provider
    from tlsstorm.meter.service import MeterService

    settings = load_settings(MeterSettings, flags, "tlsstorm meter")
    command = flags.command[1:] if flags.command[:1] == ["--"] else flags.command
    try:
        service = MeterService(settings, tracer_provider("tlsstorm-meter"), command or None)
    except (OSError, ValueError) as error:
        raise SystemExit(f"tlsstorm meter: {error}") from None
    if service.problem and not command:
        print(f"tlsstorm meter: {service.problem} (it keeps looking)", file=sys.stderr)
    _serve(service)
    sys.exit(service.exit_code)


def _certificate(flags: argparse.Namespace) -> None:
    from pathlib import Path

    from tlsstorm.localstack.mta import certificate_files

    folder = Path(flags.out)
    folder.mkdir(parents=True, exist_ok=True)
    names = [name.strip() for name in flags.names.split(",") if name.strip()]
    cert, key = certificate_files(flags.hostname, folder, names)
    key.chmod(0o640 if flags.group_readable else 0o600)
    print(f"{cert} and {key}: {flags.hostname} ({', '.join(names) or 'no other names'})")


def _up(flags: argparse.Namespace) -> None:
    from tlsstorm.localstack.jaeger import api_example as jaeger_api_example
    from tlsstorm.localstack.jaeger import jaeger_binary
    from tlsstorm.localstack.layout import LocalStack

    binary = jaeger_binary() if flags.jaeger is not False else None
    if flags.jaeger and binary is None:
        raise SystemExit("--jaeger: no jaeger binary (build it: scripts/go-build.sh jaeger, or "
                         "set TLSSTORM_JAEGER)")
    local = LocalStack(with_locust=True, jaeger_binary=binary, target=flags.target,
                       meter_url=flags.meter)
    local.stack.start()
    print("tlsstorm is up (Ctrl-C stops everything):")
    for name, url in local.urls().items():
        print(f"  {name:<18} {url}")
    if binary is None:
        print("  (traces: `make jaeger` builds Jaeger, which `tlsstorm up` then starts)")
    else:
        print(f"  {'Jaeger query API':<18} {jaeger_api_example()}")
    print("open the Locust web UI, set the TLS ratio under 'Custom parameters', press Start;\n"
          "the receiver's numbers follow in its stats and in the cost report")
    try:
        local.stack.wait()
    finally:
        local.stack.stop()


def _demo(flags: argparse.Namespace) -> None:
    from tlsstorm.localstack.demo import run_demo

    run_demo(messages=flags.messages, tls_ratio=flags.tls_ratio, users=flags.users,
             size=flags.size, rate=flags.rate, target=flags.target)


def _sweep(flags: argparse.Namespace) -> None:
    from pathlib import Path

    from tlsstorm.sweep.command import run_sweep

    if flags.matrix:
        from tlsstorm.sweep.matrix import ROWS, run_matrix

        keys = flags.matrix.split(",") if flags.matrix != "all" else list(ROWS)
        unknown = [key for key in keys if key not in ROWS]
        if unknown:
            raise SystemExit(f"--matrix: unknown rows {unknown}; choose from {', '.join(ROWS)}")
        run_matrix(keys, flags.rate, flags.messages, flags.size,
                   Path(flags.output).with_name("matrix"), rounds=flags.rounds)
        return
    run_sweep(target=flags.target, meter_url=flags.meter,
              ratios=flags.ratios, rate=flags.rate, messages=flags.messages, size=flags.size,
              scenario=flags.scenario, capacity_rates=flags.capacity_rates,
              capacity_seconds=flags.capacity_seconds, slo_p99_ms=flags.slo_p99_ms,
              output=Path(flags.output), processing_cpu_us=flags.processing_cpu_us,
              queue_fsync=flags.queue_fsync)


def _plan(flags: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tlsstorm.plan.model import ModelError, from_sweep
    from tlsstorm.plan.project import Demand, Inputs, plan
    from tlsstorm.plan.report import text_plan

    try:
        demand = Demand.of(flags.messages_per_day, flags.peak_factor, flags.peak_rate)
        model = from_sweep(Path(flags.sweep), Path(flags.matrix) if flags.matrix else None)
        result = plan(model, Inputs(demand, tuple(flags.tls_trajectory), flags.size,
                                    flags.target_utilisation, flags.slo_p99_ms,
                                    flags.processing_cpu_ms, flags.per_connection))
    except (ValueError, ModelError) as error:
        raise SystemExit(f"tlsstorm plan: {error}") from None
    print(json.dumps(result, indent=2) if flags.json else text_plan(result))


def _ratios(text: str) -> list[float]:
    return [_ratio(part) for part in text.split(",") if part.strip()]


def _utilisation(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a utilisation is above 0 and below 1, not {text}")
    return value


def _number(text: str, kind: type = float):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _ratio(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a TLS ratio is between 0 and 1, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"more than 0, not {text}")
    return value


def _check(flags: argparse.Namespace) -> None:
    from tlsstorm.localstack.check import run_check

    sys.exit(run_check(flags.sender_url.rstrip("/"), flags.collector_url.rstrip("/"),
                       flags.timeout))


def add_target_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--target", metavar="postfix|exim|HOST:PORT",
                        help=f"a mail server as the target ({what}): a Postfix or Exim the "
                        "stack starts beside a meter, or your own server (with --meter)")
    parser.add_argument("--meter", metavar="URL", help="the meter beside --target HOST:PORT "
                        "(tlsstorm meter), e.g. http://mx1:8028")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsstorm", description="Measure what STARTTLS spam costs a mail server.")
    parser.add_argument("--version", action="version", version=f"tlsstorm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    receiver = commands.add_parser("receiver", help="SMTP sink with STARTTLS and a stats API")
    add_flags(receiver, ReceiverSettings)
    receiver.set_defaults(run=_receiver)

    sender = commands.add_parser("sender", help="botnet emulator with a control API")
    add_flags(sender, SenderSettings)
    sender.set_defaults(run=_sender)

    collector = commands.add_parser("collector", help="OTLP span collector and cost report")
    add_flags(collector, CollectorSettings)
    collector.set_defaults(run=_collector)

    meter = commands.add_parser(
        "meter", help="beside any mail server: its processes' CPU and memory, to the collector")
    add_flags(meter, MeterSettings)
    meter.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                       help="run the server itself (in a container it shares with the meter, "
                            "with --cgroup self), and end when it ends")
    meter.set_defaults(run=_meter)

    certificate = commands.add_parser(
        "certificate", help="issue a server's chain as the receiver's (for a mail server "
        "measured as a target): TLSSTORM_RECEIVER_* settings, root files included")
    certificate.add_argument("--hostname", required=True, metavar="NAME",
                             help="the server's name (the leaf's subject and first name)")
    certificate.add_argument("--names", default="", metavar="NAME[,NAME...]",
                             help="more DNS names or IPs in the certificate")
    certificate.add_argument("--out", required=True, metavar="DIR",
                             help="where cert.pem (leaf, then intermediates) and key.pem go")
    certificate.add_argument("--group-readable", action="store_true",
                             help="key.pem readable by its group too (a server that reads it "
                                  "as another user)")
    certificate.set_defaults(run=_certificate)

    up = commands.add_parser("up", help="run the local stack until Ctrl-C")
    up.add_argument("--jaeger", action=argparse.BooleanOptionalAction, default=None,
                    help="run Jaeger and forward spans to it (default: when a jaeger binary is "
                         "found: TLSSTORM_JAEGER, PATH, .tools/bin)")
    add_target_flags(up, "the sender's default target and Locust's first choice")
    up.set_defaults(run=_up)

    demo = commands.add_parser(
        "demo", help="start the stack, send a mixed wave with headless Locust, print costs")
    demo.add_argument("--messages", type=_positive_int, default=2000, metavar="N",
                      help="messages in the wave (at least 1)")
    demo.add_argument("--rate", type=_positive_float, default=50, metavar="PER_S",
                      help="messages a second (the default wave lasts 40 s)")
    demo.add_argument("--tls-ratio", type=_ratio, default=0.3, metavar="RATIO",
                      help="share sent with STARTTLS, 0 to 1")
    demo.add_argument("--users", type=_positive_int, default=8, metavar="N",
                      help="Locust users (concurrent bots)")
    demo.add_argument("--size", type=_positive_int, default=2048, metavar="BYTES",
                      help="message size in bytes")
    demo.add_argument("--target", choices=["postfix", "exim"],
                      help="a real MTA the stack starts beside its meter, instead of the "
                           "receiver (Postfix needs root, Exim Docker)")
    demo.set_defaults(run=_demo)
    sweep = commands.add_parser(
        "sweep", help="waves at several TLS ratios: CPU fit, capacity, report")
    add_target_flags(sweep, "measure it instead of the receiver")
    sweep.add_argument("--ratios", type=_ratio, nargs="+", metavar="RATIO",
                       help="TLS ratios (default 0 0.2 0.3 0.5 0.7 1)")
    sweep.add_argument("--scenario", choices=["rustock"], help="rustock: 0 -> 20%% -> 30%% -> 70%%")
    sweep.add_argument("--rate", type=_positive_float, default=40.0, metavar="MSGS_PER_S",
                       help="messages per second per wave")
    sweep.add_argument("--messages", type=_positive_int, default=200, metavar="N",
                       help="messages per wave")
    sweep.add_argument("--size", type=_positive_int, default=2048, metavar="BYTES",
                       help="message size in bytes")
    sweep.add_argument("--capacity-rates", type=_positive_float, nargs="*", default=[],
                       metavar="MSGS_PER_S",
                       help="rates to step through per ratio for the capacity curve")
    sweep.add_argument("--capacity-seconds", type=_positive_float, default=5.0,
                       metavar="SECONDS", help="seconds per step")
    sweep.add_argument("--slo-p99-ms", type=_positive_float, default=200.0, metavar="MS",
                       help="session p99 a sustained rate must keep")
    sweep.add_argument("--processing-cpu-us", type=int, default=0, metavar="MICROSECONDS",
                       help="receiver CPU work per message (a content filter's cost)")
    sweep.add_argument("--queue-fsync", action="store_true",
                       help="the receiver writes and fsyncs each message, as an MTA queues it")
    from tlsstorm.sweep.matrix import ROWS as MATRIX_ROWS

    sweep.add_argument("--matrix", metavar="ROWS", help="the mitigation matrix instead: 'all' or "
                       f"a comma list of {','.join(MATRIX_ROWS)}")
    sweep.add_argument("--rounds", type=_positive_int, default=1, metavar="N",
                       help="with --matrix: rounds per row, shown as mean +- 95%% interval")
    sweep.add_argument("--output", default="results/sweep", metavar="DIR",
                       help="folder for the report")
    sweep.set_defaults(run=_sweep)

    planner = commands.add_parser(
        "plan", help="cores, bandwidth and latency your volume needs, from a saved sweep")
    planner.add_argument("--sweep", default="results/sweep/sweep.json", metavar="FILE",
                         help="a sweep's sweep.json (tlsstorm sweep --capacity-rates ...)")
    planner.add_argument("--matrix", metavar="FILE",
                         help="a matrix.json (tlsstorm sweep --matrix ...): what each "
                         "mitigation would save")
    planner.add_argument("--messages-per-day", type=_positive_float, metavar="N",
                         help="mail volume per day")
    planner.add_argument("--peak-factor", type=_positive_float, default=3.0, metavar="X",
                         help="peak rate over the day's mean (default 3)")
    planner.add_argument("--peak-rate", type=_positive_float, metavar="MSGS_PER_S",
                         help="the peak rate itself, instead of a daily volume")
    planner.add_argument("--tls-trajectory", type=_ratios, default=[0.2, 0.3, 0.7],
                         metavar="R1,R2,...", help="TLS ratios to plan for (default "
                         "0.2,0.3,0.7: Rustock's shift)")
    planner.add_argument("--size", type=_positive_int, metavar="BYTES",
                         help="message size (default: the sweep's)")
    planner.add_argument("--target-utilisation", type=_utilisation, default=0.7,
                         metavar="SHARE", help="CPU utilisation to size cores for (0.7)")
    planner.add_argument("--slo-p99-ms", type=_positive_float, default=500.0, metavar="MS",
                         help="session p99 objective")
    planner.add_argument("--processing-cpu-ms", type=float, metavar="MS",
                         help="per-message content filtering CPU (default: as measured)")
    planner.add_argument("--per-connection", type=_positive_int, default=1, metavar="N",
                         help="messages per connection (other than 1 needs --matrix with the "
                         "batch row)")
    planner.add_argument("--json", action="store_true", help="the plan as JSON")
    planner.set_defaults(run=_plan)

    check = commands.add_parser(
        "check", help="send one plain and one STARTTLS mail; exit 0 once the collector has both")
    check.add_argument("--sender-url", default=os.environ.get(
        "TLSSTORM_CHECK_SENDER_URL", "http://127.0.0.1:8026"), metavar="URL",
        help="the sender's API")
    check.add_argument("--collector-url", default=os.environ.get(
        "TLSSTORM_CHECK_COLLECTOR_URL", "http://127.0.0.1:8027"), metavar="URL",
        help="the collector's API")
    check.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                       help="seconds for the whole check: the sender accepting connections, "
                       "then the collector holding both sessions")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> None:
    flags = build_parser().parse_args(argv)
    try:
        flags.run(flags)
    except KeyboardInterrupt:
        sys.exit(130)
