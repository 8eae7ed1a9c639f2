"""The `hapax` command: serve, check, plugins, config-reference."""

from __future__ import annotations

import argparse
import logging
import sys

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
    _setup_logging(args.log_level)
    config = _load(args.config)
    _validate(config)
    workers = args.workers or config.server.workers
    if workers > 1:
        from hapax.server.supervisor import run_supervisor

        return run_supervisor(config, workers=workers, host=args.host, port=args.port)
    from hapax.server.worker import run_worker

    return run_worker(config, host=args.host, port=args.port)


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
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a pipeline.yaml (exit 1 on problems)")
    p.add_argument("config")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plugins", help="list plugins and the hooks each implements")
    p.add_argument("config", nargs="?")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config_reference)
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
