"""YAML read strictly: what `yaml.safe_load` accepts silently is an error naming the line.

Duplicate keys (YAML keeps the last one), nesting deeper than MAX_NESTING and alias bombs are refused,
and every dotted key path is mapped to its line so that explain() can point a validation error into the file.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from finetune.errors import UserError

MAX_NESTING = 50  # mapping/list levels in a recipe file (a real one has 3)
MAX_EXPANDED_NODES = 100_000  # YAML nodes once aliases are expanded (a real recipe has ~200)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """(data, {dotted key: line}) of a YAML document, refusing what safe_load would accept silently:
    duplicate keys (YAML keeps the last), nesting deeper than MAX_NESTING, and alias bombs."""
    loader = yaml.CSafeLoader(text) if yaml.__with_libyaml__ else yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines = _check_structure(node, source)
        return loader.construct_document(node), lines
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{source}{where}: {problem}; fix the YAML syntax") from err
    except RecursionError as err:  # the parser itself recurses per level
        raise UserError(f"{source}: nested too deeply to be a recipe (more than {MAX_NESTING} levels)") from err
    finally:
        loader.dispose()


def _check_structure(root: yaml.Node, source: str) -> dict[str, int]:
    """Walk the node graph once (an alias is the same node object, walked once) and map dotted key
    paths to 1-based line numbers, so errors can point into the file."""
    lines: dict[str, int] = {}
    expanded: dict[int, int] = {}  # id(node) -> size of its subtree with aliases expanded

    def walk(node: yaml.Node, prefix: str, depth: int) -> int:
        if depth > MAX_NESTING:
            raise UserError(f"{source}:{node.start_mark.line + 1}: nested more than {MAX_NESTING} levels deep")
        if id(node) in expanded:
            return expanded[id(node)]
        expanded[id(node)] = 1  # a node reached again while being walked: a recursive alias
        size = 1
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first and key != "<<":  # `<<` merge keys may repeat by design
                    raise UserError(
                        f"{source}:{line}: duplicate key '{prefix}{key}' (first at line {first[key]}); "
                        "YAML would silently keep only the last one: remove one"
                    )
                first[key] = line
                lines.setdefault(f"{prefix}{key}", line)
                size += 1 + walk(value_node, f"{prefix}{key}.", depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            size += sum(walk(item, prefix, depth + 1) for item in node.value)
        if size > MAX_EXPANDED_NODES:
            raise UserError(
                f"{source}:{node.start_mark.line + 1}: YAML aliases expand this recipe to over "
                f"{MAX_EXPANDED_NODES:,} values; a recipe has a few hundred: remove the repeated aliases"
            )
        expanded[id(node)] = size
        return size

    walk(root, "", 0)
    return lines


# A union member's tag in an error's location (pydantic): bool, int, literal['auto'], list[str], ...
UNION_MEMBER = re.compile(r"^(bool|int|float|str|none|literal\[.*\]|list\[.*\]|dict\[.*\])$")


def explain(err: ValidationError, source: str, lines: dict[str, int], root: type[BaseModel]) -> str:
    """The first validation error of the model `root` as one line: `file:line: key: problem; hint`."""
    errors = [
        {**e, "loc": tuple(str(p) for p in e["loc"] if not str(p).startswith("function-after"))} for e in err.errors()
    ]
    first = _one_for_union(errors, root)
    loc = list(first["loc"])
    key = ".".join(loc) or "(top level)"
    line = _nearest_line(loc, lines)
    where = f"{source} (--set)" if line == 0 else f"{source}:{line}" if line else source
    if first["type"] == "extra_forbidden":
        fields = _fields_at(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
        return f"{where}: unknown key '{key}'; {hint}"
    if first["type"] == "missing":
        return f"{where}: missing required key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "literal_error":
        message = f"must be {first['ctx']['expected']}"
    given = first.get("input")
    if isinstance(given, bool) or given is None:  # as the YAML says it
        shown = f" (got {'null' if given is None else str(given).lower()})"
    else:
        shown = f" (got {given!r})" if isinstance(given, (str, int, float)) else ""
    return f"{where}: {key}: {message}{shown}"


def _one_for_union(errors: list[dict], root: type[BaseModel]) -> dict:
    """pydantic reports a value that fits no member of a union (`bool | "auto"`, `str | list[str]`) once per member,
    the member's tag in the location. One error instead: an item's error when the value is a list or mapping
    member with a bad item (`[q_proj, 1]`: item 1 must be a string), else "must be A or B"."""
    first = errors[0]
    loc = first["loc"]
    at = next((i for i, part in enumerate(loc) if UNION_MEMBER.match(part) and _is_union(root, loc[:i])), None)
    if at is None:
        return first
    field = loc[:at]
    members = [e for e in errors if e["loc"][:at] == field and len(e["loc"]) > at]
    nested = next((e for e in members if len(e["loc"]) > at + 1), None)
    if nested is not None:
        return {**nested, "loc": field + nested["loc"][at + 1 :]}
    choices = dict.fromkeys(_describe(e["loc"][at]) for e in members)
    return {**first, "loc": field, "type": "union", "msg": "must be " + " or ".join(choices)}


def _describe(member: str) -> str:
    if member.startswith("literal["):
        return member.removeprefix("literal[").removesuffix("]").replace(",", " or")
    names = {"bool": "true/false", "int": "an integer", "float": "a number", "str": "a string", "none": "null"}
    return names.get(member, f"a {member.split('[')[0]}")


def _is_union(model: type[BaseModel], loc: tuple[str, ...]) -> bool:
    """Whether the field at `loc` (model fields from `model` down) is annotated with a union."""
    annotation = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        annotation = model = model.model_fields[part].annotation
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def _nearest_line(loc: list[str], lines: dict[str, int]) -> int | None:
    """The line of the key, or of the nearest section above it that is in the file; 0 for a --set value."""
    for end in range(len(loc), 0, -1):
        line = lines.get(".".join(loc[:end]))
        if line is not None:
            return line
    return None
