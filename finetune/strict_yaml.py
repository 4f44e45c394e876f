"""YAML read strictly: what `yaml.safe_load` accepts silently is an error naming the line.

Duplicate keys (YAML keeps the last one), nesting deeper than MAX_NESTING and alias bombs are refused,
and every dotted key path is mapped to its line so validation errors can point into the file.
"""

from __future__ import annotations

from typing import Any

import yaml

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
