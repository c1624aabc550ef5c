"""`python -m pinstream demo|recommend|bench ...`"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# The sub-commands: (name, module, one-line help), in the order the usage lists them. Each
# module has main(argv) -> int. A module outside the pinstream package is a folder of the
# repository next to it (bench/): the runtime users install does not carry it.
COMMANDS = (
    ("demo", "pinstream.demo", "run a Wan 2.1-shaped model under every offload mode and print a table"),
    ("recommend", "pinstream.recommend", "detect GPU and RAM, recommend ComfyUI flags and a PinStream mode"),
    ("bench", "bench", "benchmarks: `bench overhead`, `bench plot RESULTS.json`, `bench gpu`, `bench comfyui`, `bench disk`"),
)

USAGE = "\n".join(
    [
        "usage: python -m pinstream COMMAND [options]",
        "",
        "commands:",
        *(f"  {name:<12}{help_line}" for name, _module, help_line in COMMANDS),
        "",
        "`python -m pinstream COMMAND --help` describes each command.",
    ]
)

# The folder that holds the pinstream package: a repository checkout, or site-packages.
REPOSITORY = Path(__file__).resolve().parent.parent


def _load(name: str, module: str):
    """The command's module, or None (with the reason printed) when it is a repository
    folder that is not there (an installed runtime)."""
    if module.split(".")[0] != __package__:
        if not (REPOSITORY / module / "__init__.py").is_file():
            print(f"pinstream {name}: `python -m pinstream {name}` lives in the repository's {module}/ folder "
                  "(benchmarks and test tools are not installed with the runtime); run it from a PinStream checkout",
                  file=sys.stderr)
            return None
        if str(REPOSITORY) not in sys.path:
            sys.path.insert(0, str(REPOSITORY))
    return importlib.import_module(module)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    module = next((m for name, m, _help in COMMANDS if name == cmd), None)
    if module is None:
        print(f"unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    loaded = _load(cmd, module)
    if loaded is None:
        return 2
    return loaded.main(rest)


if __name__ == "__main__":
    sys.exit(main())
