"""Errors raised by processors; the stage loop turns them into dead letters or error replies."""

__all__ = [
    "StreamsearchError",
    "ProcessorError",
    "ConfigError",
    "BadDocumentError",
    "InvalidDocumentError",
    "DimensionMismatchError",
    "ModelNotFoundError",
    "InvalidParameterError",
    "QueryLanguageError",
    "ConditionTypeError",
    "RequestLimitError",
    "RegexBudgetError",
]


class StreamsearchError(Exception):
    """The one base of every error streamsearch raises on purpose."""


class ProcessorError(StreamsearchError):
    """A processor could not handle its input."""


class ConfigError(StreamsearchError):
    """A processor's configuration is invalid."""


class BadDocumentError(ProcessorError):
    """A Document lacks what the processor needs (text, embedding, ...)."""


class InvalidDocumentError(BadDocumentError):
    """A Document's id or text is refused at the entry (empty or long id, control characters, lone surrogates)."""


class DimensionMismatchError(BadDocumentError):
    """An embedding's dimension differs from the index's."""


class ModelNotFoundError(ConfigError):
    """The model directory does not exist or holds no model."""


class InvalidParameterError(StreamsearchError):
    """A request parameter is unknown or has the wrong type or range."""


class QueryLanguageError(InvalidParameterError):
    """An operation of the query language is unknown, malformed or carries a bad value."""


class ConditionTypeError(QueryLanguageError):
    """A condition met a value of a kind its lookup never matches (a string tag against a number):
    refused rather than counted as no match, which would return nothing without a word."""


class RequestLimitError(InvalidParameterError):
    """A request exceeds one of its per-request limits (``RequestLimits``); the message names it."""


class RegexBudgetError(RequestLimitError):
    """A request's regex conditions used up their evaluation time (``RequestLimits.regex_budget_s``)."""
