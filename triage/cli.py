"""The ``triage`` command. Thin: it parses arguments and calls the modules below it.

Errors the user can act on are one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from triage import __version__
from triage.errors import TriageError

EPILOG = """examples:
  triage demo --out demo-out              score the bundled sample studies, print the worklist
  triage score path/to/study/             print one study's priority event as JSON
  triage models verify                    check every model's manifest and sha256
  triage worker --bootstrap 127.0.0.1:9092 --processes 2
  triage gateway --bootstrap 127.0.0.1:9092 --store /data/studies    receive DICOM, publish study events
  triage events --bootstrap 127.0.0.1:9092                           watch the priority events
"""


def _settings(args: argparse.Namespace, **extra):
    from triage.settings import Settings

    keys = ("models_dir", "rules", "policy", "max_voxels", "providers", "processes", "metrics_port",
            "study_deadline_s")
    return Settings.load({k: getattr(args, k, None) for k in keys} | extra)


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", dest="models_dir", metavar="DIR", help="model folders (default: models/)")
    p.add_argument("--rules", metavar="FILE", help="routing rules YAML (default: triage/config/routing.yaml)")
    p.add_argument("--policy", metavar="FILE", help="priority policy YAML (default: triage/config/policy.yaml)")
    p.add_argument("--max-voxels", type=int, metavar="N", help="refuse series larger than N voxels")
    p.add_argument("--providers", choices=("auto", "cpu", "cuda"), help="ONNX Runtime providers (default: auto)")


def cmd_score(args: argparse.Namespace) -> int:
    from triage.events import STUDY_SCHEMA, Status, now_iso, parse_study_event, to_json
    from triage.pipeline import Pipeline

    folder = Path(args.study_dir)
    settings = _settings(args)
    study = parse_study_event({
        "schema": STUDY_SCHEMA, "study_instance_uid": _folder_study_uid(folder),
        "source": {"uri": folder.resolve().as_uri()}, "received_at": now_iso(),
        "accession_number": args.accession, "requested_priority": args.requested_priority,
        "patient_class": args.patient_class})
    outcome = Pipeline.from_settings(settings).process(study)
    print(json.dumps(json.loads(to_json(outcome.event)), indent=2))
    if outcome.event.status is Status.FAILED:
        print(f"triage: study failed ({outcome.event.error.kind}): {outcome.event.error.message}", file=sys.stderr)
        return 1
    return 0


def _folder_study_uid(folder: Path) -> str:
    """The folder's StudyInstanceUID, or a UID derived from its path when none is readable."""
    import hashlib

    from triage.dicom.scan import list_files, read_header
    from triage.events import is_uid

    if folder.is_dir():
        try:
            files = list_files(folder)[0][:20]
        except TriageError:
            files = []
        for rel in files:
            try:
                uid = str(read_header(folder, rel)[0].get("StudyInstanceUID", ""))
            except Exception:  # any header that cannot give a UID: try the next, else derive one
                continue
            if is_uid(uid):
                return uid
    return "2.25." + str(int(hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:30], 16))


def cmd_demo(args: argparse.Namespace) -> int:
    from triage.demo import run_demo, summary, worklist_table

    settings = _settings(args)
    out = Path(args.out)
    extra = [Path(d) for d in args.studies or []]
    for folder in extra:
        if not folder.is_dir():
            print(f"triage: --studies {folder} is not a folder", file=sys.stderr)
            return 2
    events = run_demo(settings, out, progress=not args.no_progress, extra=extra)
    print()
    print(worklist_table(events))
    print()
    print(summary(events, out))
    if settings.metrics_port:
        print(f"Metrics were served on http://{settings.metrics_host}:{settings.metrics_port}/metrics while it ran.")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from triage.inference.registry import DEFAULT_MODELS, check_models

    models_dir = _settings(args).models_dir or DEFAULT_MODELS
    checks = check_models(models_dir)
    if args.action == "verify":
        for c in checks:
            print(f"{'OK  ' if c.ok else 'FAIL'} {c.folder}: {c.message}")
        if not checks:
            print(f"no models under {models_dir}")
        return 0 if all(c.ok for c in checks) else 1
    rows = []
    for c in checks:
        m = c.manifest
        rows.append({"name": c.folder, "ok": c.ok, "message": c.message,
                     "version": m.version if m else None, "format": m.format if m else None,
                     "findings": [f.code for f in m.findings] if m else [],
                     "operating_point": m.operating_point if m else None, "mode": m.mode if m else None,
                     "envelope": (f"n={m.envelope.n_studies}" if m.envelope else "none") if m else None,
                     "sha256": m.sha256 if m else None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models under {models_dir}")
        return 0
    header = ("NAME", "VERSION", "FORMAT", "FINDINGS", "MODE", "ENVELOPE", "STATUS")
    table = [header] + [(r["name"], r["version"] or "-", r["format"] or "-", ",".join(r["findings"]) or "-",
                         r["mode"] or "-", r["envelope"] or "-", "ok" if r["ok"] else r["message"]) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip())
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from triage.events import published_schemas

    folder = Path(args.dir)
    stale = []
    for name, doc in published_schemas().items():
        text = json.dumps(doc, indent=2) + "\n"
        path = folder / name
        if args.write:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path))
    if stale:
        print(f"triage: out of date with triage/events.py: {', '.join(stale)} (run: triage schemas --write)",
              file=sys.stderr)
        return 1
    return 0


def _verify_models_or_linger(settings, linger_s: float) -> None:
    """Verify every model folder (manifest and sha256) and export the outcome per model. A
    worker that refuses to start stays up for ``linger_s`` with /metrics served, so that
    Prometheus scrapes the failure (the TriageModelVerificationFailed alert) before it exits."""
    from triage import metrics
    from triage.errors import ModelError
    from triage.inference.registry import check_models

    checks = check_models(settings.models_dir)
    for check in checks:
        metrics.MODEL_VERIFIED.labels(check.folder).set(1 if check.ok else 0)
    failed = [c for c in checks if not c.ok]
    if not failed:
        return
    print(f"triage: {failed[0].message}", file=sys.stderr, flush=True)
    if settings.metrics_port and linger_s > 0:
        print(f"triage: not joining the group; /metrics stays up {linger_s:g} s so the failure is scraped",
              file=sys.stderr, flush=True)
        time.sleep(linger_s)
    raise ModelError(f"{len(failed)} model folder(s) failed verification; the worker did not start")


def cmd_worker(args: argparse.Namespace) -> int:
    from triage import metrics
    from triage.bus.kafka import KafkaConfig, KafkaSink, KafkaSource, check_connection
    from triage.pipeline import Pipeline
    from triage.worker.host import Host, HostOptions, Topics
    from triage.worker.pool import WorkerPool

    # A stop that comes while the worker starts (models verified, broker checked) is kept and
    # honoured before the group is joined: an orderly exit 0, never the default SIGTERM death.
    stop_requested: list = []

    def on_stop(*_) -> None:
        stop_requested.append(True)
        if hosts:
            hosts[0].stop()

    hosts: list = []
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    settings = _settings(args)
    kafka = KafkaConfig.load(bootstrap=args.bootstrap, group=args.group)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    _verify_models_or_linger(settings, args.failed_start_linger)
    pipeline = Pipeline.from_settings(settings)  # fail fast: models verified before joining the group
    check_connection(kafka)  # one line naming the cause: certificate, password, protocol, or no broker
    topics = Topics(studies=args.in_topic, priority=args.out_topic, dlq=args.dlq_topic)
    options = HostOptions(max_in_flight=args.max_in_flight or 2 * settings.processes,
                          retry_attempts=args.retry_attempts, retry_backoff_s=args.retry_backoff,
                          max_crashes=args.max_crashes, drain_timeout_s=args.drain_timeout)
    host = Host(KafkaSource(kafka), KafkaSink(kafka), WorkerPool(settings, settings.processes), pipeline,
                topics=topics, options=options)
    hosts.append(host)
    if stop_requested:  # the pool, producer and consumer are closed by run's shutdown
        print("triage: stopped before joining the group", file=sys.stderr, flush=True)
        host.stop()
    host.run()
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from triage.bus.kafka import KafkaConfig, KafkaSink, check_connection
    from triage.events import STUDY_SCHEMA, now_iso, parse_study_event, to_json

    folder = Path(args.study_dir)
    if not folder.is_dir():
        print(f"triage: {folder} is not a folder", file=sys.stderr)
        return 2
    study = parse_study_event({
        "schema": STUDY_SCHEMA, "study_instance_uid": args.study_uid or _folder_study_uid(folder),
        "source": {"uri": folder.resolve().as_uri()}, "received_at": now_iso(),
        "accession_number": args.accession, "requested_priority": args.requested_priority,
        "patient_class": args.patient_class})
    config = KafkaConfig.load(bootstrap=args.bootstrap)
    check_connection(config)
    sink = KafkaSink(config)
    handle = sink.send(args.topic, study.study_instance_uid.encode(), to_json(study).encode())
    sink.flush(30.0)
    if handle.error() is not None:
        print(f"triage: the broker did not acknowledge the study event ({handle.error()})", file=sys.stderr)
        return 1
    sink.close()
    print(f"submitted study event to {args.topic}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from triage.bus.kafka import KafkaConfig, check_connection, read_topic

    config = KafkaConfig.load(bootstrap=args.bootstrap, client_id="triage-events")
    check_connection(config)
    seen = 0
    for value in read_topic(config, args.topic, from_beginning=args.from_beginning, idle_timeout_s=args.idle_timeout):
        print(value.decode("utf-8", "replace") if value is not None else "null", flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from triage.bus.kafka import KafkaConfig, KafkaSink, check_connection
    from triage.errors import BusError, BusSecurityError
    from triage.gateway.config import GatewaySettings
    from triage.gateway.service import Gateway

    keys = ("store", "ae_title", "host", "port", "http_port", "window_s", "allow", "topic", "max_instance_bytes",
            "max_study_bytes", "tls_cert", "tls_key", "tls_ca", "metrics_port")
    overrides = {k: getattr(args, k) for k in keys}
    overrides["ae_windows"] = ",".join(args.ae_window) if args.ae_window else None
    settings = GatewaySettings.load(overrides)
    if not args.verbose:  # a broker that is down is expected here: the outbox logs it once per try
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    kafka = KafkaConfig.load(bootstrap=args.bootstrap, client_id="triage-gateway")
    try:  # a refusal (certificate, password, protocol) stops the gateway; a broker that is down does not
        check_connection(kafka, timeout_s=5.0)
    except BusSecurityError:
        raise
    except BusError as exc:
        logging.getLogger("triage.gateway").warning("%s; receiving anyway, study events wait in the outbox", exc)
    gateway = Gateway(settings, lambda: KafkaSink(kafka))
    gateway.start()
    signal.signal(signal.SIGTERM, lambda *_: gateway.stop())
    signal.signal(signal.SIGINT, lambda *_: gateway.stop())
    gateway.wait()
    gateway.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="AI triage for tele-radiology: score incoming studies and move urgent ones up the worklist. "
                    "Bundled models are trained on synthetic phantoms and are not for diagnostic use.")
    parser.add_argument("--version", action="version", version=f"triage {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    order = argparse.ArgumentParser(add_help=False)
    order.add_argument("--accession", help="accession number to put in the event")
    order.add_argument("--requested-priority", choices=("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"),
                       help="the order's requested procedure priority")
    order.add_argument("--patient-class", choices=("emergency", "inpatient", "outpatient"))

    p = sub.add_parser("score", parents=[order], help="score one study folder; print its priority event as JSON",
                       description="Score one study folder and print its priority event as JSON. Exit 0 for "
                                   "scored or no_applicable_model, 1 for failed (the cause goes to stderr).")
    p.add_argument("study_dir", help="folder with the study's DICOM files")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("demo", help="score sample studies with a worker pool on the in-process bus",
                       description="Make sample studies from DICOM files shipped with pydicom (and pydicom-data), "
                                   "score them with the worker pool on an in-process bus, write "
                                   "priority-events.jsonl and print the worklist.")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--metrics-port", type=int, default=9464, help="serve /metrics here while running; 0: off")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--studies", metavar="DIR", action="append",
                   help="also score every study folder in DIR, e.g. phantoms (repeatable)")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list or verify the installed models")
    p.add_argument("action", choices=("list", "verify"), help="list: show models; verify: check manifests and hashes")
    p.add_argument("--models", dest="models_dir", metavar="DIR", help="model folders (default: models/)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("schemas", help="check (or --write) schemas/*.json against the event types")
    p.add_argument("--dir", default="schemas", help="schema folder (default: schemas)")
    p.add_argument("--write", action="store_true", help="write the files instead of checking them")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("worker", help="run a worker host against Apache Kafka",
                       description="Consume study events, score them with N worker processes, publish priority "
                                   "events. Kafka security settings come from TRIAGE_KAFKA_* variables.")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    p.add_argument("--processes", type=int, help="worker processes (default: 2)")
    p.add_argument("--group", default="triage", help="consumer group (default: triage)")
    p.add_argument("--in-topic", default="triage.studies")
    p.add_argument("--out-topic", default="triage.priority")
    p.add_argument("--dlq-topic", default="triage.dlq")
    p.add_argument("--max-in-flight", type=int, help="studies in flight before partitions pause (default: 2 x processes)")
    p.add_argument("--retry-attempts", type=int, default=3, help="attempts for retriable errors (default: 3)")
    p.add_argument("--retry-backoff", type=float, default=1.0, metavar="S",
                   help="first wait before a retriable study is tried again, doubling up to 30 s (default: 1)")
    p.add_argument("--study-deadline", dest="study_deadline_s", type=float, metavar="S",
                   help="wall clock for one study (fetch, decode, inference); past it the worker process is "
                        "killed and the study fails as 'timeout' (default: 300, or TRIAGE_STUDY_DEADLINE_S)")
    p.add_argument("--max-crashes", type=int, default=2, metavar="N",
                   help="a study that kills its worker process N times fails as 'worker_crash' (default: 2)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight work on SIGTERM")
    p.add_argument("--metrics-port", type=int, default=9464, help="serve /metrics here; 0: off (default: 9464)")
    p.add_argument("--failed-start-linger", type=float, default=60.0, metavar="S",
                   help="when a model fails verification at start, keep /metrics up this long before exiting, "
                        "so Prometheus sees triage_model_verified 0 (default: 60; 0: exit at once)")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", parents=[order], help="publish a study event for a folder to Kafka")
    p.add_argument("study_dir")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    p.add_argument("--topic", default="triage.studies")
    p.add_argument("--study-uid", help="StudyInstanceUID (default: read from the files)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("events", help="print the events of a topic (default: triage.priority), one JSON per line",
                       description="Print the records of a Kafka topic as they arrive, one per line, outside any "
                                   "consumer group (nothing is committed). Handy to watch the worklist feed.")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    p.add_argument("--topic", default="triage.priority", help="topic to read (default: triage.priority)")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the next one")
    p.add_argument("--count", type=int, metavar="N", help="stop after N records")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without a record")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser(
        "gateway", help="receive studies over DICOM (C-STORE) and STOW-RS; publish study events",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Receive instances over DICOM C-STORE and DICOMweb STOW-RS, store them under "
                    "STORE/<study>/<series>/<instance>.dcm (fsync, then an atomic link; a success status "
                    "means the instance is on disk), and publish one study event per study once no "
                    "instance has arrived for the quiet window. State and the outbox live in "
                    "STORE/.gateway/state.sqlite; a restart resumes them and deletes nothing.",
        epilog="example:\n  triage gateway --bootstrap 127.0.0.1:9092 --store /data/studies --allow MODALITY1@10.1.2.0/24\n"
               "  storescu -aec TRIAGE 127.0.0.1 11112 +sd +r study-folder/\n\n"
               "Settings also come from TRIAGE_GATEWAY_<NAME> (e.g. TRIAGE_GATEWAY_TLS_CERT), "
               "Kafka security from TRIAGE_KAFKA_*.")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    p.add_argument("--store", metavar="DIR", help="study store, shared with the workers (required)")
    p.add_argument("--ae-title", help="our AE title; associations calling another are refused (default: TRIAGE)")
    p.add_argument("--host", help="address to listen on (default: 0.0.0.0; the allow-list decides who gets in)")
    p.add_argument("--port", type=int, help="DICOM port; 0: off (default: 11112)")
    p.add_argument("--http-port", type=int, help="STOW-RS port; 0: off (default: 8042)")
    p.add_argument("--window-s", type=float, metavar="S",
                   help="a study is complete after S seconds without a new instance (default: 5)")
    p.add_argument("--ae-window", action="append", metavar="AE=S", help="a quiet window for one calling AE (repeatable)")
    p.add_argument("--topic", help="study events topic (default: triage.studies)")
    p.add_argument("--allow", metavar="AE[@HOST],...",
                   help="calling AE titles allowed, each from a host, network (10.0.0.0/8) or loopback when no "
                        "host is given; * is any AE. Default: any AE title, from loopback only")
    p.add_argument("--max-instance-bytes", type=int, metavar="N", help="refuse larger instances (default: 2 GiB)")
    p.add_argument("--max-study-bytes", type=int, metavar="N", help="refuse instances past this per study (default: 16 GiB)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate: DICOM TLS and HTTPS only")
    p.add_argument("--tls-key", metavar="PEM", help="its private key")
    p.add_argument("--tls-ca", metavar="PEM", help="also require client certificates signed by this CA")
    p.add_argument("--metrics-port", type=int, help="serve /metrics here; 0: off (default: 0)")
    p.set_defaults(func=cmd_gateway)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = ("score", "models", "schemas", "submit", "events")
    level = {0: logging.WARNING if args.command in quiet else logging.INFO,
             1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose < 2:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
        logging.getLogger("pynetdicom").setLevel(logging.ERROR)  # and pynetdicom logs peers' AE titles
    if args.command == "score" and not args.verbose:
        logging.getLogger("triage.pipeline").setLevel(logging.ERROR)  # the CLI prints the one line itself
    try:
        return args.func(args)
    except TriageError as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
