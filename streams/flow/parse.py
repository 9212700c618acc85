"""The Flow YAML: which executors each stage uses, how many replicas, how many shards.

A flow is fully described and checked before anything runs (the Topology idea): a bad key,
an unknown executor or a wrong type is reported with its line in the YAML. Each section has its
own checker, called in the order the YAML's sections are checked, so the first fault is the one reported.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any

import yaml

from processors.exceptions import InvalidParameterError, QueryLanguageError, RequestLimitError
from processors.query.operators import Operation, parse_operations
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import DENSE, FUSIONS, RETRIEVALS, SearchParameters
from streams.exceptions import FlowConfigError
from streams.flow.executors import DEFAULT_RANKER, RANKERS, build_config
from streams.flow.spec import (DEFAULT_MAX_CHUNKS_PER_DOCUMENT, DEFAULT_MAX_PAYLOAD_BYTES, PROCESSING_GUARANTEES,
                               FlowSpec, SearchDefaults, StageConfig)
from streams.kafka.consumer import MAX_FETCH_WAIT_MS
from streams.stages.kinds import INDEX, KINDS, STAGE_TOPIC_ROLES, StageKind
from streams.wire.topics import FLOW_ROLES, TopicSettings

__all__ = ["load_flow", "parse_flow"]

_FLOW_KEYS = {"name", "version", "stages", "state_dir", "kafka", "max_payload_bytes", "search", "processing_guarantee",
              "topics", "max_chunks_per_document"}
_TOPICS_KEYS = {"replication_factor", "min_insync_replicas", "config"}
_COMMON_STAGE_KEYS = frozenset({"uses", "with", "replicas", "metrics_port"})
_STAGE_KEYS = _COMMON_STAGE_KEYS.union(*(kind.keys for kind in KINDS.values()))
_ONLY = {"shards": ("has shards", "have shards"), "ranker": ("has a ranker", "have a ranker"),
         "filter_by": ("takes filter_by", "take filter_by"),
         "query_language": ("takes query_language", "take query_language")}
"""How the error for a key a kind does not take says which kinds take it (singular, plural)."""

KeyPath = tuple[str, ...]
"""A key path in the YAML: ``("stages", "index", "shards")``."""


class _Fail:
    """Makes the error for a key path, naming the YAML line of that key (or of its nearest parent)."""

    def __init__(self, where: str, root: Any) -> None:
        self.where = where
        self.lines = _key_lines(root)

    def __call__(self, path: KeyPath, message: str) -> FlowConfigError:
        lines = self.lines
        line = lines.get(path) or next((lines[path[:i]] for i in range(len(path), 0, -1) if path[:i] in lines), None)
        return FlowConfigError(f"{self.where}{f':{line}' if line else ''}: {message}")


def load_flow(path: str | Path) -> FlowSpec:
    """Read and check a flow YAML file.

    :raises FlowConfigError: with the file, line and reason.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FlowConfigError(f"cannot read flow {path}: {exc.strerror}") from exc
    return parse_flow(text, source=path)


def parse_flow(text: str, *, source: Path | None = None) -> FlowSpec:
    """Check a flow YAML text; see ``load_flow``."""
    data, fail = _compose(text, str(source) if source else "<flow>")
    name, version = _name(data, fail), _version(data, fail)
    stages, shards = _stages(data.get("stages"), fail)
    state_dir = _state_dir(data.get("state_dir"), fail)
    search = _search(data.get("search") or {}, fail)
    _check_retrieval(search, stages, fail)
    kafka = data.get("kafka") or {}
    if not isinstance(kafka, dict):
        raise fail(("kafka",), "'kafka' must map librdkafka settings to values")
    max_payload = data.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
    if not isinstance(max_payload, int) or max_payload < 1024:
        raise fail(("max_payload_bytes",), "max_payload_bytes must be an integer >= 1024")
    guarantee = data.get("processing_guarantee", "at_least_once")
    if guarantee not in PROCESSING_GUARANTEES:
        raise fail(("processing_guarantee",), f"processing_guarantee must be one of {', '.join(PROCESSING_GUARANTEES)}, "
                                              f"got {guarantee!r}")
    topic_settings = _topic_settings(data.get("topics"), fail)
    max_chunks = data.get("max_chunks_per_document", DEFAULT_MAX_CHUNKS_PER_DOCUMENT)
    if not _positive(max_chunks):
        raise fail(("max_chunks_per_document",), "max_chunks_per_document must be a positive integer")
    return FlowSpec(name=name, max_chunks_per_document=max_chunks, topic_settings=topic_settings, stages=stages,
                    shards=shards, state_dir=state_dir, kafka=kafka, max_payload_bytes=max_payload,
                    processing_guarantee=guarantee, search=search, source=source, version=version)


def _compose(text: str, where: str) -> tuple[dict[str, Any], _Fail]:
    """The YAML as a mapping of known keys, and the errors' line map.

    :raises FlowConfigError: for invalid YAML, a document that is no mapping, or an unknown key.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:  # a syntax error: PyYAML says where
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise FlowConfigError(f"{where}{line}: invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise FlowConfigError(f"{where}: invalid YAML: {exc}") from exc
    fail = _Fail(where, root)
    if not isinstance(data, dict):
        raise fail((), "a flow is a mapping with 'name' and 'stages'")
    for key in data:
        if key not in _FLOW_KEYS:
            raise fail((key,), f"unknown key {key!r}; known: {', '.join(sorted(_FLOW_KEYS))}")
    return data, fail


def _state_dir(value: Any, fail: _Fail) -> Path:
    """The directory of the shards' state (``.streamsearch/state`` when unset)."""
    if value is None:
        return Path(".streamsearch") / "state"
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise fail(("state_dir",), f"state_dir must be a directory path, got {value!r}")
    return Path(value)


def _positive(value: Any) -> bool:
    """A positive integer, and not a YAML boolean."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _name(data: dict[str, Any], fail: _Fail) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise fail(("name",), "'name' must be letters, digits, '-' or '_' (it prefixes every topic)")
    return name


def _version(data: dict[str, Any], fail: _Fail) -> int:
    version = data.get("version", 1)
    if not _positive(version):
        raise fail(("version",), "'version' must be a positive integer (the index version: "
                                 "`streamsearch reindex` builds a higher one beside the serving one)")
    return int(version)


def _stages(stages_data: Any, fail: _Fail) -> tuple[tuple[StageConfig, ...], int]:
    """The stages, checked against the table of stage kinds, and the index's shard count."""
    if not isinstance(stages_data, dict) or not stages_data:
        raise fail(("stages",), "'stages' must map stage names to their settings")
    names = list(stages_data)
    _check_stage_names(names, fail)
    shards = 1
    stages = []
    for stage_name in names:
        settings = stages_data[stage_name] or {}
        path = ("stages", stage_name)
        _check_stage_keys(stage_name, settings, path, fail)
        replicas = settings.get("replicas", 1)
        if not _positive(replicas):
            raise fail(path + ("replicas",), f"stage {stage_name}: replicas must be a positive integer")
        if "shards" in settings:
            _require_key(stage_name, "shards", path, fail)
            shards = settings["shards"]
            if not _positive(shards):
                raise fail(path + ("shards",), f"{stage_name}: shards must be a positive integer")
        stages.append(_stage(KINDS[stage_name], settings, replicas, path, fail))
    return tuple(stages), shards


def _check_stage_names(names: list[str], fail: _Fail) -> None:
    """Every stage a kind of the table, the required ones there, all in the table's order."""
    for stage_name in names:
        if stage_name not in KINDS:
            raise fail(("stages", stage_name), f"unknown stage {stage_name!r}; stages are {', '.join(KINDS)}")
    missing = [s for s, kind in KINDS.items() if kind.required and s not in names]
    if missing:
        raise fail(("stages",), f"flow needs the stages {', '.join(missing)}")
    if names != [s for s in KINDS if s in names]:
        raise fail(("stages",), f"stages must come in data-flow order: {', '.join(KINDS)}")


def _check_stage_keys(name: str, settings: Any, path: KeyPath, fail: _Fail) -> None:
    if not isinstance(settings, dict):
        raise fail(path, f"stage {name!r} must be a mapping")
    for key in settings:
        if key not in _STAGE_KEYS:
            raise fail(path + (key,), f"stage {name}: unknown key {key!r}; known: {', '.join(sorted(_STAGE_KEYS))}")


def _stage(kind: StageKind, settings: dict[str, Any], replicas: int, path: KeyPath, fail: _Fail) -> StageConfig:
    name = kind.name
    uses, config = _executor(kind, settings, path, fail)
    if "ranker" in settings:
        _require_key(name, "ranker", path, fail)
    ranker_uses, ranker_config = _ranker(name, settings.get("ranker") or {}, path, fail) if "ranker" in kind.keys \
        else (None, None)
    filter_by = _filter_by(name, settings, path, fail)
    operations = _operations(name, settings, path, fail)
    metrics_port = settings.get("metrics_port")
    if metrics_port is not None and (not _positive(metrics_port) or metrics_port > 65535):
        raise fail(path + ("metrics_port",), f"stage {name}: metrics_port must be a port number")
    return StageConfig(
        name=name, uses=uses, config=config, replicas=replicas, ranker_uses=ranker_uses, ranker_config=ranker_config,
        filter_by=filter_by, query_language=operations, metrics_port=metrics_port,
    )


def _executor(kind: StageKind, settings: dict[str, Any], path: KeyPath, fail: _Fail) -> tuple[str | None, Any]:
    """The stage's ``uses`` (its kind's default if unset) and its checked ``with``."""
    name = kind.name
    uses = settings.get("uses", kind.default_uses)
    params = settings.get("with") or {}
    if not isinstance(params, dict):
        raise fail(path + ("with",), f"stage {name}: 'with' must be a mapping")
    if uses is not None and not isinstance(uses, str):
        raise fail(path + ("uses",), f"stage {name}: 'uses' must name an executor, got {uses!r}")
    if not kind.executors:
        if uses is not None or params:
            raise fail(path, f"the {name} stage takes no executor: {kind.without_executor}")
        return uses, None
    if uses not in kind.executors:
        raise fail(path + ("uses",), f"stage {name}: unknown executor {uses!r}; available: {', '.join(kind.executors)}")
    try:
        return uses, build_config(kind.executors[uses].config_type, params, f"stage {name} ({uses})")
    except FlowConfigError as exc:
        raise fail(path + ("with",), str(exc)) from exc


def _ranker(name: str, ranker: Any, path: KeyPath, fail: _Fail) -> tuple[str, Any]:
    if not isinstance(ranker, dict):
        raise fail(path + ("ranker",), f"stage {name}: 'ranker' must be a mapping (uses, with), got {ranker!r}")
    ranker_uses = ranker.get("uses", DEFAULT_RANKER)
    if not isinstance(ranker_uses, str) or ranker_uses not in RANKERS:
        raise fail(path + ("ranker",), f"unknown ranker {ranker_uses!r}; available: {', '.join(RANKERS)}")
    params = ranker.get("with") or {}
    if not isinstance(params, dict):
        raise fail(path + ("ranker", "with"), f"stage {name}: the ranker's 'with' must be a mapping")
    return ranker_uses, build_config(RANKERS[ranker_uses].config_type, params, f"stage {name} ranker ({ranker_uses})")


def _filter_by(name: str, settings: dict[str, Any], path: KeyPath, fail: _Fail) -> tuple[str, ...]:
    filter_by = settings.get("filter_by") or []
    if not isinstance(filter_by, list) or not all(isinstance(f, str) and f for f in filter_by):
        raise fail(path + ("filter_by",), f"stage {name}: filter_by must be a list of field names")
    if filter_by:
        _require_key(name, "filter_by", path, fail)
    return tuple(filter_by)


def _operations(name: str, settings: dict[str, Any], path: KeyPath, fail: _Fail) -> tuple[Operation, ...]:
    if "query_language" not in settings:
        return ()
    _require_key(name, "query_language", path, fail)
    try:
        return parse_operations(settings["query_language"])
    except QueryLanguageError as exc:
        raise fail(path + ("query_language",), f"stage {name}: query_language: {exc}") from exc


def _require_key(name: str, key: str, path: KeyPath, fail: _Fail) -> None:
    """:raises FlowConfigError: if the kind of stage ``name`` does not take ``key``, naming those that do."""
    if key in KINDS[name].keys:
        return
    holders = [kind.name for kind in KINDS.values() if key in kind.keys]
    one, many = _ONLY[key]
    raise fail(path + (key,), f"only the {' and '.join(holders)} stage{'s' if len(holders) > 1 else ''} "
                              f"{many if len(holders) > 1 else one}")


def _search(search: Any, fail: _Fail) -> SearchDefaults:
    if not isinstance(search, dict):
        raise fail(("search",), "'search' must map setting names to values")
    known = [f.name for f in dataclasses.fields(SearchDefaults)]
    for key in search:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise fail(("search", key), f"search: unknown key {key!r}"
                                        f"{f' (did you mean {close[0]!r}?)' if close else ''}; known: {', '.join(known)}")
    for key, allowed in (("retrieval", RETRIEVALS), ("fusion", FUSIONS)):
        if key in search and search[key] not in allowed:
            raise fail(("search", key), f"search: {key} must be one of {', '.join(allowed)}, got {search[key]!r}")
    given = {key: search[key] for key in ("top_k", "chunk_oversample", "retrieval", "fusion") if key in search}
    try:  # the limits a request of one query with these defaults meets
        REQUEST_LIMITS.check_fetch(SearchParameters.parse(given), queries=1)
    except (InvalidParameterError, RequestLimitError) as exc:
        at = next((key for key in ("top_k", "chunk_oversample") if key in given and key in str(exc)), None)
        raise fail(("search", at) if at else ("search",), f"search: {exc}") from None
    timeout = search.get("timeout_s")
    if "timeout_s" in search and (not _number(timeout) or not 0 < timeout <= REQUEST_LIMITS.max_deadline_s):
        raise fail(("search", "timeout_s"), f"search: timeout_s must be a number of seconds in (0, "
                                            f"{REQUEST_LIMITS.max_deadline_s:g}], got {timeout!r}")
    wait = search.get("fetch_wait_ms")
    if wait is not None and (not _number(wait) or isinstance(wait, float) or not 0 <= wait <= MAX_FETCH_WAIT_MS):
        raise fail(("search", "fetch_wait_ms"), f"search: fetch_wait_ms must be null (by the broker) or whole "
                                                f"milliseconds in [0, {MAX_FETCH_WAIT_MS}], got {wait!r}")
    return SearchDefaults(**search)


def _number(value: Any) -> bool:
    """An int or a finite float, and not a YAML boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_retrieval(search: SearchDefaults, stages: tuple[StageConfig, ...], fail: _Fail) -> None:
    """:raises FlowConfigError: for a default retrieval the index cannot answer (no lexical arm)."""
    index = next(stage for stage in stages if stage.name == INDEX.name)
    if search.retrieval != DENSE and not index.config.lexical:
        raise fail(("search", "retrieval"), f"search: retrieval {search.retrieval!r} needs the lexical arm: "
                                            "give the index stage `with: {lexical: true}`")


def _topic_settings(section: Any, fail: _Fail) -> TopicSettings:
    if section is None:
        return TopicSettings()
    if not isinstance(section, dict):
        raise fail(("topics",), "'topics' must be a mapping: replication_factor, min_insync_replicas, config")
    for key in section:
        if key not in _TOPICS_KEYS:
            raise fail(("topics", key), f"topics: unknown key {key!r}; known: {', '.join(sorted(_TOPICS_KEYS))}")
    replication, min_insync = _replica_counts(section, fail)
    return TopicSettings(replication, min_insync, _topic_configs(section.get("config") or {}, fail))


def _replica_counts(section: dict[str, Any], fail: _Fail) -> tuple[int | None, int | None]:
    """``replication_factor`` and ``min_insync_replicas``: each unset or a positive integer, in that order."""
    counts = {}
    for key in ("replication_factor", "min_insync_replicas"):
        value = section.get(key)
        if value is not None and not _positive(value):
            raise fail(("topics", key), f"topics: {key} must be a positive integer")
        counts[key] = value
    replication, min_insync = counts["replication_factor"], counts["min_insync_replicas"]
    if replication and min_insync and min_insync > replication:
        raise fail(("topics", "min_insync_replicas"),
                   "topics: min_insync_replicas above replication_factor would refuse every write")
    return replication, min_insync


def _topic_configs(config: Any, fail: _Fail) -> dict[str, dict[str, str]]:
    """``topics.config``: Kafka topic configs by topic role, as the strings Kafka takes."""
    known = list(dict.fromkeys(role.name for role in (*FLOW_ROLES, *STAGE_TOPIC_ROLES)))
    if not isinstance(config, dict):
        raise fail(("topics", "config"), f"topics.config maps a topic ({', '.join(known)}) to Kafka topic configs")
    checked: dict[str, dict[str, str]] = {}
    for role, entries in config.items():
        if role not in known:
            raise fail(("topics", "config", str(role)), f"topics.config: unknown topic {role!r}; known: {', '.join(known)}")
        if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
            raise fail(("topics", "config", role), f"topics.config.{role} must map Kafka topic configs to values")
        checked[role] = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in entries.items()}
    return checked


def _key_lines(node: Any, path: KeyPath = ()) -> dict[KeyPath, int]:
    """Map each key path of a composed YAML mapping to its 1-based line."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (str(key_node.value),)
            lines[key_path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key_path))
    return lines
