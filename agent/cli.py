"""``edgewatch-agent``: run the scoring service, check its config, score files, replay data."""

from __future__ import annotations

import sys

from agent.settings import AgentSettings
from plumbing.cli import base_parser, validate_config


def main(argv: list[str] | None = None) -> int:
    parser, _subparsers = base_parser("edgewatch-agent", "Edge scoring service.")
    args = parser.parse_args(argv)
    if args.command == "validate-config":
        return validate_config(AgentSettings, args.config)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
