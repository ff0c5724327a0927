"""`tradeplane-svc query`: the desk's questions to the analytics service, over its HTTP port.

tradeplane-svc query ohlcv --symbol AAPL --interval 1m [--from T] [--to T]
tradeplane-svc query vwap --symbol AAPL [--from T] [--to T]
tradeplane-svc query positions [--account N] [--sequence S | --time T]
tradeplane-svc query tca [--account N] [--revision R] [--from T] [--to T]
tradeplane-svc query kpis [--revision R] [--from T] [--to T]
tradeplane-svc query last [--symbol AAPL]

Times are ISO 8601 (UTC unless they say otherwise) or nanoseconds since the epoch. The answer is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

QUESTIONS = {
    "ohlcv": ("symbol", "interval", "from", "to"),
    "vwap": ("symbol", "from", "to"),
    "positions": ("account", "sequence", "time"),
    "tca": ("account", "revision", "from", "to"),
    "kpis": ("revision", "from", "to"),
    "last": ("symbol",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--analytics", default="http://127.0.0.1:9106", help="the analytics service's HTTP (metrics) port"
    )
    questions = parser.add_subparsers(dest="question", required=True)
    for question, names in QUESTIONS.items():
        sub = questions.add_parser(question)
        for name in names:
            sub.add_argument(f"--{name}", dest=name)


def main(arguments: argparse.Namespace) -> int:
    names = QUESTIONS[arguments.question]
    parameters = {name: getattr(arguments, name) for name in names if getattr(arguments, name) is not None}
    url = f"{arguments.analytics.rstrip('/')}/{arguments.question}?{urllib.parse.urlencode(parameters)}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        print(f"tradeplane-svc query: {error.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 2 if error.code == 400 else 1
    except OSError as error:
        print(f"tradeplane-svc query: {url}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0
