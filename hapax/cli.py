"""The `hapax` command: serve, reload, check, plugins, config-reference, cert."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from hapax import __version__
from hapax.config import Config, default_config, load
from hapax.errors import ConfigError, PluginError

__all__ = ["main"]


def _load(path: str | None) -> Config:
    return default_config() if path is None else load(path)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def _validate(config: Config) -> object:
    """Build (but do not start) a gateway: loads plugins and checks their settings."""
    from hapax.pipeline.gateway import Gateway

    return Gateway(config)


def cmd_serve(args: argparse.Namespace) -> int:
    # Until the server's SIGHUP handler is in place, a reload request waits (blocked)
    # instead of killing the process with SIGHUP's default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    _setup_logging(args.log_level)
    config = _load(args.config)
    _validate(config)
    _raise_open_files_limit()
    _report_core()
    workers = args.workers or config.server.workers
    pid_file = Path(args.pid_file) if args.pid_file else None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n", encoding="ascii")
    try:
        if workers > 1:
            from hapax.server.supervisor import run_supervisor

            return run_supervisor(config, workers=workers, host=args.host, port=args.port,
                                  path=args.config)
        from hapax.server.worker import run_worker

        return run_worker(config, host=args.host, port=args.port, path=args.config)
    finally:
        if pid_file is not None and _read_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)


#: Below this many open files, ``hapax serve`` warns: each client connection is a file
#: descriptor, and a proxied request holds a second one to its provider.
LOW_OPEN_FILES = 4096


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard limit (at most 2**20), as nginx's
    ``worker_rlimit_nofile`` or Go's runtime do: the soft default of many systems, 1024,
    would cap a worker at a few hundred concurrent clients, refusing the rest with
    EMFILE.  Workers inherit it.  Warns if what is allowed stays low."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - refused by the system
            logging.getLogger("hapax").debug("could not raise the open-files limit: %s", exc)
    if soft != resource.RLIM_INFINITY and soft < LOW_OPEN_FILES:
        logging.getLogger("hapax").warning(
            "the open-files limit is %d (hard limit %s): each client connection takes one "
            "and each proxied request another, so a worker can serve about %d clients at "
            "once; raise it (ulimit -n, or LimitNOFILE= in a systemd unit)", soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard, soft // 2)


def _report_core() -> None:
    """Say when the pure-Python twins of the core serve instead of the compiled units:
    a warning when nobody asked for it (they cost more CPU per request), a note when
    ``HAPAX_NO_EXTENSIONS`` is set."""
    from hapax._core import IMPLEMENTATION, MISSING

    if IMPLEMENTATION == "c":
        return
    log = logging.getLogger("hapax")
    if MISSING is None:
        log.info("running the pure-Python core: HAPAX_NO_EXTENSIONS is set")
        return
    log.warning("the compiled core is not in use (%s): the gateway runs its pure-Python "
                "twins, which cost more CPU per request; install with `pip install .`, which "
                "compiles it (it needs a C compiler and the Python headers), or run `python "
                "setup.py build_ext --inplace` in a source checkout", MISSING)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _is_hapax(pid: int) -> bool:
    """False only if /proc shows ``pid`` running something else."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"hapax" in f.read()
    except OSError:  # no such process (os.kill reports it), or no /proc: cannot tell
        return True


def cmd_reload(args: argparse.Namespace) -> int:
    if args.config is not None:
        from hapax.server.worker import check_config, describe_problem

        try:
            check_config(args.config)
        except (ConfigError, PluginError) as exc:
            print(describe_problem(exc), file=sys.stderr)
            print(f"{args.config}: not reloading (no signal sent)", file=sys.stderr)
            return 2
    pid = args.pid
    if pid is None:
        pid = _read_pid(Path(args.pid_file))
        if pid is None:
            print(f"{args.pid_file}: no process id in it (is hapax serve --pid-file "
                  f"running?)", file=sys.stderr)
            return 1
    if not _is_hapax(pid):
        print(f"process {pid} is not hapax (a stale pid file?): not signalling it",
              file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no process {pid}: is the server running?", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"not allowed to signal process {pid}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to pid {pid}: the outcome is in the server's log and in "
          f"hapax_config_generation")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config)
    gw = _validate(config)
    keys = "open (no keys)" if config.keys is None else f"{len(config.keys)} key(s)"
    plugins = [p.name for p in gw.plugin_infos if p.source != "builtin"]  # type: ignore[attr-defined]
    print(f"{args.config}: OK — {len(config.providers)} provider(s), {len(config.models)} "
          f"model alias(es), {keys}, plugins: {', '.join(plugins) or 'none'}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    config = _load(args.config)
    gw = _validate(config)
    for info in gw.plugin_infos:  # type: ignore[attr-defined]
        print(f"{info.name}  [{info.source}]")
        for hook in info.hooks:
            print(f"    {hook}")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from hapax.docgen import config_reference

    sys.stdout.write(config_reference())
    return 0


def cmd_cert_dev(args: argparse.Namespace) -> int:
    from hapax.server.tls import make_dev_certs

    hosts = args.host or ["localhost", "127.0.0.1", "::1"]
    out = make_dev_certs(Path(args.dir), hosts, days=args.days)
    print(f"wrote {out.ca} (the CA to trust), {out.cert} and {out.key} "
          f"(for {', '.join(hosts)}; valid {args.days} days)")
    print("\nIn pipeline.yaml:\n")
    print(f"server:\n  tls:\n    cert: {out.cert.resolve()}\n    key: {out.key.resolve()}")
    print(f"\nClients trust the CA, e.g. SSL_CERT_FILE={out.ca.resolve()} or "
          f"curl --cacert {out.ca.resolve()}.  For development only: never deploy these.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hapax", description="Hapax LLM gateway")
    parser.add_argument("--version", action="version", version=f"hapax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("config", nargs="?", help="pipeline.yaml (default: built-in mock setup)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port (0: any free port)")
    p.add_argument("--workers", type=int, help="override server.workers")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--pid-file", help="write the server's process id to this file "
                   "(removed on exit), for hapax reload")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("reload", help="make a running server re-read its pipeline.yaml "
                       "(SIGHUP)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=int, help="the server's process id")
    target.add_argument("--pid-file", help="the file hapax serve --pid-file wrote")
    p.add_argument("--config", help="check this file first (as hapax check does) and send "
                   "nothing if it is invalid (exit 2)")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("check", help="validate a pipeline.yaml (exit 1 on problems)")
    p.add_argument("config")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plugins", help="list plugins and the hooks each implements")
    p.add_argument("config", nargs="?")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser("cert", help="TLS certificates for server.tls")
    cert = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    p = cert.add_parser("dev", help="make a local CA and a server certificate signed by it "
                        "(development and tests only)")
    p.add_argument("--dir", default="hapax-dev-certs", help="where to write ca.pem, "
                   "cert.pem and key.pem (default: ./hapax-dev-certs)")
    p.add_argument("--host", action="append", help="a name or IP address the certificate "
                   "is for; repeat for more (default: localhost, 127.0.0.1, ::1)")
    p.add_argument("--days", type=int, default=30, help="validity in days (default: 30)")
    p.set_defaults(func=cmd_cert_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except PluginError as exc:
        print(f"plugin error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
