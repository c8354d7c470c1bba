"""Serve the test suite's ONCat stand-in (tests/oncat_server.py) on a fixed address, for docker-compose.

    python oncat_standin.py --data-root /data --token demo-token --host 0.0.0.0 --port 8000
"""

import argparse
import sys

from oncat_server import ONCatServer


def main(argv: "list[str]") -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="/data", help="the facility tree ONCat knows (default /data)")
    p.add_argument("--token", default="demo-token", help="the API token requests must carry")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    standin = ONCatServer(args.data_root, token=args.token, host=args.host, port=args.port)
    print("ONCat stand-in on %s for %s" % (standin.url, args.data_root), flush=True)
    try:
        standin.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
