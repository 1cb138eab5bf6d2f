"""Hardened YAML reading: the safe loader with duplicate-key and alias-bomb checks, and YAML writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from metadg.config.files import MAX_CONFIG_BYTES, atomic_write_text, read_text_capped
from metadg.config.schema import ConfigError

#: values a YAML document may hold once aliases are expanded; a paper grid holds a few thousand
MAX_YAML_NODES = 100_000


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse one YAML mapping with the safe loader; errors name the file and line."""
    path = Path(path)
    text = read_text_capped(path, "config file", MAX_CONFIG_BYTES, ConfigError)
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, refusing duplicate keys and anchors/aliases that expand past MAX_YAML_NODES.

    Aliases share one object, so a small "billion laughs" file loads cheaply, but every later walk
    (includes, ${var} expansion, validation, logging) would expand it; it is refused up front.
    """
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # what yaml.safe_load uses, split to check the node graph before building
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source, {}, set())
        return loader.construct_document(node)
    except yaml.reader.ReaderError as exc:  # a control character or invalid code point: where it is and which
        line = text[:exc.position].count("\n") + 1 if isinstance(text, str) else 1
        code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
        raise ConfigError(f"{source}:{line}: invalid YAML: character U+{code:04X} is not allowed "
                          "(control characters other than tab and newline cannot appear in YAML)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_nodes(node: yaml.Node, source: str, sizes: dict[int, int], open_nodes: set[int]) -> int:
    # Returns the node count once aliases are expanded; `sizes` memoises shared nodes, so this is linear.
    if id(node) in sizes:
        return sizes[id(node)]
    where = f"{source}:{node.start_mark.line + 1}"
    if id(node) in open_nodes:
        raise ConfigError(f"{where}: an alias refers to a node that contains it (recursive YAML)")
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            children += [key, value]
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = first.setdefault((key.tag, key.value), key.start_mark.line + 1)
                if line != key.start_mark.line + 1:
                    at = f"{source}:{key.start_mark.line + 1}"
                    raise ConfigError(f"{at}: duplicate key {key.value!r} (first on line {line})")
    total = 1
    for child in children:
        total += _check_nodes(child, source, sizes, open_nodes)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: anchors and aliases here expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)"
            )
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def dump_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write a mapping as readable YAML (key order kept)."""
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
