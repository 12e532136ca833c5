"""`deepbandit <subcommand> --help`: that subcommand's options only, each with its default and one line.

Everything is read from where it is stated once: the options and their defaults from the composed config
(so `deepbandit train model=small --help` shows the small model's values), the descriptions from the
trailing comments of `conf/<subcommand>.yaml`, of the chosen `conf/<group>/<option>.yaml` and of the typed
config's dataclass fields, and the examples from the comment block at the top of `conf/<subcommand>.yaml`.
Nothing here imports torch: help must come back in a second or two.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import io
import re
import tokenize
import typing
from enum import Enum
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

CONF_MODULE = "deepbandit.conf"
_HIDDEN_GROUPS = ("hydra",)  # Hydra's own groups (launcher, sweeper, logging): --hydra-help lists them
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def conf_dir() -> Path:
    return Path(str(resources.files(CONF_MODULE)))


def _trailing_comment(rest: str) -> str | None:
    """The comment of ``value  # comment`` (None without one); a ``#`` inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1 :].strip()
    return None


def yaml_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """{dotted key: its comment} of a config yaml: the comment on the key's line, else the comment lines
    just above it (with a leading ``key:`` of their own removed)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    above: list[str] = []
    in_header = True  # the file's leading comment block describes the file, not its first key
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not in_header:
                above.append(stripped.lstrip("#").strip())
            continue
        in_header = False
        if not stripped:
            above = []
            continue
        match = _KEY.match(line)
        if not match or stripped.startswith("-"):
            above = []
            continue
        indent, key = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([prefix, *(k for _, k in stack), key] if prefix else [*(k for _, k in stack), key])
        comment = _trailing_comment(match["rest"])
        if comment is None and above:
            comment = re.sub(rf"^{key}:\s*", "", " ".join(above))
        if comment and key != "defaults":
            out[dotted] = comment
        stack.append((indent, key))
        above = []
    return out


def header_lines(path: Path) -> list[str]:
    """The comment block at the top of a yaml (its title line and examples)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#")[1:] if line.startswith("# ") else line.lstrip("#"))
    return lines


def _class_comments(cls: type) -> dict[str, str]:
    """{field: comment} from a dataclass's source: the comment on the field's line, else the comment lines
    just above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    line_tokens: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            words = [t for t in line_tokens if t.type not in (tokenize.INDENT, tokenize.DEDENT)]
            comments = [t.string.lstrip("#").strip() for t in words if t.type == tokenize.COMMENT]
            code = [t for t in words if t.type != tokenize.COMMENT]
            if not code and comments:
                above.extend(comments)
            elif (
                len(code) >= 2 and code[0].string in names and code[1].string == ":" and code[0].start[1] > 0
            ):
                text = comments[0] if comments else " ".join(above)
                if text:
                    out.setdefault(code[0].string, text)
                above = []
            else:
                above = []
            line_tokens = []
        else:
            line_tokens.append(tok)
    return out


def dataclass_comments(cls: type, prefix: str = "") -> dict[str, str]:
    """{dotted key: comment} for every field of a dataclass tree (nested dataclasses recursed into)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if dataclasses.is_dataclass(klass):
            out.update({f"{prefix}{k}": v for k, v in _class_comments(klass).items()})
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no nested descriptions, nothing worse
        hints = {}
    for f in dataclasses.fields(cls):
        sub = hints.get(f.name)
        if typing.get_origin(sub) is dict and len(typing.get_args(sub)) == 2:
            if f"{prefix}{f.name}" in out:  # every entry of a dict shares the field's description
                out.setdefault(f"{prefix}{f.name}.*", out[f"{prefix}{f.name}"])
            sub, key = typing.get_args(sub)[1], "*."  # a dict of dataclasses: any key (matched by fnmatch)
        else:
            key = ""
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out.update(dataclass_comments(sub, f"{prefix}{f.name}.{key}"))
    return out


def schema_class(config_name: str) -> type | None:
    """The dataclass registered as the root schema of ``conf/<config_name>.yaml`` (its defaults list's
    first entry, ``<name>_schema``)."""
    repo = ConfigStore.instance().repo
    node = repo.get(f"{config_name}_schema.yaml")
    if node is None:
        return None
    cls = OmegaConf.get_type(node.node)
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def compose_with_choices(config_name: str, overrides: list[str]) -> tuple[DictConfig, dict[str, str | None]]:
    """The composed config (unresolved) and the option chosen in each config group."""
    from deepbandit.cli.schemas import register_schema

    register_schema(config_name)
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    choices = {
        g: c
        for g, c in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
        if g.split("/")[0] not in _HIDDEN_GROUPS
    }
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def descriptions(config_name: str, choices: dict[str, str | None]) -> dict[str, str]:
    """{dotted key: one-line description}: the yaml comments win over the dataclass comments."""
    out: dict[str, str] = {}
    cls = schema_class(config_name)
    if cls is not None:
        out.update(dataclass_comments(cls))
    root = conf_dir()
    for group, option in choices.items():
        # "model@deep.model": conf/model/<option>.yaml placed at deep.model
        folder, _, package = group.partition("@")
        path = root / folder / f"{option}.yaml"
        if option and path.is_file():
            out.update(yaml_comments(path, prefix=package or folder.replace("/", ".")))
    out.update(yaml_comments(root / f"{config_name}.yaml"))
    return out


def group_options(group: str) -> list[str]:
    folder = conf_dir() / group.partition("@")[0]
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _leaves(node, prefix: str = ""):
    """(dotted key, default as written) of every leaf option; lists are one option."""
    if isinstance(node, DictConfig):
        for key in node:
            value = node._get_node(key)
            dotted = f"{prefix}{key}"
            if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
                yield from _leaves(value, f"{dotted}.")
            else:
                yield dotted, _shown(value)


def _shown(node) -> str:
    if node._is_missing():
        return "???"
    if node._is_none():
        return "null"
    if node._is_interpolation():
        return str(node._value())
    if isinstance(node, ListConfig | DictConfig):
        return str(OmegaConf.to_container(node, resolve=False)).replace("'", "")
    value = node._value()
    if isinstance(value, bool):
        return str(value).lower()  # as it is written on the command line
    return value.name if isinstance(value, Enum) else str(value)


def render(command: str, config_name: str, summary: str, overrides: list[str]) -> str:
    """The help page of ``deepbandit <command>``."""
    cfg, choices = compose_with_choices(config_name, overrides)
    described = descriptions(config_name, choices)
    lines = [f"deepbandit {command}: {summary}", ""]
    lines.append(f"usage: deepbandit {command} [key=value ...]" + (" [group=option ...]" if choices else ""))
    lines.append(
        "       (-m key=a,b runs a sweep; --debug shows tracebacks; --hydra-help shows Hydra's flags)"
    )
    header = [line.strip() for line in header_lines(conf_dir() / f"{config_name}.yaml")[1:]]  # [0]: title
    examples = [line for line in header if line.startswith("deepbandit ")]
    # notes follow the examples; lines before them continue the title, which `summary` already gives
    first = next((i for i, line in enumerate(header) if line in examples), len(header))
    notes = [line for line in header[first:] if line and line not in examples]
    if examples:
        lines += ["", "examples:", *(f"  {e}" for e in examples)]
    if notes:
        lines += ["", *notes]
    if choices:
        lines += ["", "config groups (group=option sets every option under group.):"]
        width = max(len(g) for g in choices)
        chosen_width = max(len(str(o)) for o in choices.values())
        in_config = [g for g in cfg if g in choices]  # the groups in the order their options are listed
        for group in [*in_config, *(g for g in choices if g not in in_config)]:
            chosen = choices[group] if choices[group] is not None else "-"
            options = ", ".join(group_options(group))
            lines.append(f"  {group:<{width}}  {chosen:<{chosen_width}}  choices: {options}")
    rows = list(_leaves(cfg))
    lines += ["", "options (key, default, description; ??? = required):"]
    shown = {key: default if len(default) <= 24 else default[:21] + "..." for key, default in rows}
    key_width = min(max(len(k) for k in shown), 34)
    value_width = max(len(v) for v in shown.values())
    for key, value in shown.items():
        text = described.get(key) or next(
            (d for k, d in described.items() if fnmatch.fnmatchcase(key, k)), ""
        )
        lines.append(f"  {key:<{key_width}}  {value:<{value_width}}  {text}".rstrip())
    return "\n".join(lines)
