"""Headless commands on the same API the viewer uses."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine", description="StreamSlide engine commands")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="stream a ResNet-18 trunk and check it equals conventional back-propagation")
    args = ap.parse_args(argv)
    if args.command == "demo":
        from engine import demo_check
        return demo_check.main()
    return 2
