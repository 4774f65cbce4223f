"""The floor: a bare Starlette app with one route that returns a small JSON body.

It is what HTTP alone costs on this machine, served by the same uvicorn with the
same settings as `concord serve` (run.py captures the keyword arguments that
`concord serve` hands to uvicorn and passes them here unchanged), so an
operation's ratio to the floor is the share of the HTTP-only throughput that
Concord keeps.

    python -m tests.bench.floor --port 8123 --settings '{"workers": 2, "log_level": "warning"}'
"""

from __future__ import annotations

import argparse
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

APP = "tests.bench.floor:app"


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/", ok, methods=["GET"])])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--settings", default="{}", help="uvicorn.run keyword arguments as JSON")
    args = parser.parse_args(argv)
    uvicorn.run(APP, host="127.0.0.1", port=args.port, **json.loads(args.settings))


if __name__ == "__main__":
    main()
