"""`python -m pinstream demo|recommend|bench ...`"""

from __future__ import annotations

import sys

USAGE = """usage: python -m pinstream COMMAND [options]

commands:
  demo        run a Wan 2.1-shaped model under every offload mode and print a table
  recommend   detect GPU and RAM, recommend ComfyUI flags and a PinStream mode
  bench       benchmarks: `bench overhead`, `bench plot RESULTS.json`, `bench gpu`

`python -m pinstream COMMAND --help` describes each command."""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as run
    elif cmd == "recommend":
        from .recommend import main as run
    elif cmd == "bench":
        from .bench import main as run
    else:
        print(f"unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
