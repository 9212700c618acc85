"""Which optional dependencies (extras) a command needs, checked before it starts anything.

The core install (client, CLI, HTTP bridge) holds no model, no FAISS and no RocksDB; the stages that
need them name their extra (``Executor.extra``), and ``pyproject.toml`` is the one list of what each
extra pulls: it is read back from the installed distribution's metadata, so this module declares
no package names of its own. A run that lacks one fails in one line naming what to install, instead
of starting a broker whose stage processes then die on an ImportError in their logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import Requirement

from streams.exceptions import StreamsearchError
from streams.flow.executors import INDEXERS, RANKERS
from streams.flow.spec import FlowSpec
from streams.stages.kinds import INDEX, JOIN, KINDS

__all__ = ["DISTRIBUTION", "MissingExtraError", "missing_requirements", "require_extras", "require_stage_extras",
           "stage_extras"]

DISTRIBUTION = "streamsearch"


class MissingExtraError(StreamsearchError):
    """A command needs an optional dependency group that this install lacks."""


def missing_requirements(extra: str) -> list[str]:
    """The distributions ``extra`` pulls that are not installed (empty when streamsearch itself is not
    installed, as when run from a checkout by path: there is no metadata to check against)."""
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in map(Requirement, declared):
        marker = requirement.marker
        if marker is None or not marker.evaluate({"extra": extra}) or marker.evaluate({"extra": ""}):
            continue  # a core requirement, or another extra's
        if requirement.name == DISTRIBUTION:
            missing += [name for nested in sorted(requirement.extras) for name in missing_requirements(nested)]
            continue
        try:
            metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(requirement.name)
    return missing


def require_extras(extras: Iterable[str], what: str) -> None:
    """:raises MissingExtraError: naming what lacks and the ``pip install`` that adds it."""
    wanted = sorted(set(extras))
    lacking = {extra: missing_requirements(extra) for extra in wanted}
    lacking = {extra: names for extra, names in lacking.items() if names}
    if lacking:
        names = ", ".join(name for names in lacking.values() for name in names)
        raise MissingExtraError(f"{what} needs {names}, not installed here: pip install "
                                f"'{DISTRIBUTION}[{','.join(lacking)}]' (or '{DISTRIBUTION}[all]')")


def stage_extras(flow: FlowSpec, stages: Iterable[str] | None = None) -> set[str]:
    """The extras the processes of ``stages`` (default: all of the flow's) need."""
    chosen = [flow.stage(name) for name in stages] if stages is not None else list(flow.stages)
    executors = [KINDS[stage.name].executors[stage.uses] for stage in chosen if stage.uses]
    executors += [RANKERS[stage.ranker_uses] for stage in chosen if stage.ranker_uses]
    extras = {executor.extra for executor in executors if executor.extra}
    if _fans_out_lexical_queries_without_model(flow, [stage.name for stage in chosen]):
        extras.add(INDEXERS[flow.stage(INDEX.name).uses].extra)  # tantivy, the analyzer the shards use
    return extras


def _fans_out_lexical_queries_without_model(flow: FlowSpec, stages: list[str]) -> bool:
    """The join stage of a flow without a model fans queries out, and with the lexical arm it analyses them."""
    return JOIN.name in stages and not flow.has_model and flow.lexical


def require_stage_extras(flow: FlowSpec, stages: Iterable[str] | None = None) -> None:
    """Refuse, before a broker or process starts, to run stages whose extras are not installed.

    :raises MissingExtraError: naming the stages' missing distributions and the extra to install.
    """
    chosen = list(stages) if stages is not None else [stage.name for stage in flow.stages]
    what = f"stage {chosen[0]!r} of flow {flow.label!r}" if len(chosen) == 1 else f"flow {flow.label!r}"
    require_extras(stage_extras(flow, chosen), what)
