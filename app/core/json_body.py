"""JSON request bodies: the base model of every one (`RequestBody`), and the parsing of the
few hot routes that read theirs themselves, where FastAPI's generic body handling (and
dependency solving) is a measurable share of the request.

The OpenAPI document stays the same as with a declared body parameter (`openapi_body`), and
the errors keep FastAPI's shape: a `RequestValidationError` with locations under `body`, which
the one validation handler turns into 422 `validation_error`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

from app.core.text import has_lone_surrogate

Model = TypeVar("Model", bound=BaseModel)


class RequestBody(BaseModel):
    """The base of every JSON request body: unknown fields are refused, and so is a lone
    surrogate in any string of any field (422 `validation_error`, field type `string_unicode`).

    `"\\ud800"` is valid JSON syntax (RFC 8259 section 8.2), and json.loads, which FastAPI parses
    bodies with, turns it into a Python str that no encoder writes: UTF-8 for the database,
    argon2's input, the response. Pydantic lets it through some `str` fields (an optional one
    with a validator: `device_name` reached the database, a 500), so the check is here, once,
    for every field of every body."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_lone_surrogates(cls, value: object) -> object:
        if _holds_lone_surrogate(value):
            raise PydanticCustomError(
                "string_unicode", "Input should be valid Unicode text: it holds a lone surrogate"
            )
        return value


def _holds_lone_surrogate(value: object) -> bool:
    """Whether any string in a parsed JSON value (keys included) holds one. Iterative: a body
    may nest as deep as the parser allowed, close to the recursion limit."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads `model` as its JSON body. Flat models only: a
    nested model's `#/$defs/...` references would not resolve inside the OpenAPI document."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise ValueError(f"{model.__name__} nests models: declare it as a body parameter")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def parse_json_body(request: Request, model: type[Model]) -> Model:
    """The body as `model`, refused as FastAPI refuses it: missing, not JSON, or invalid."""
    raw = await request.body()
    if not raw:
        raise _invalid("missing", "Field required")
    if not _is_json(request.headers.get("content-type", "")):
        raise _invalid("content_type", "Content-Type must be application/json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if not _is_utf8(raw):  # 400 malformed_body, as FastAPI answers an undecodable body
            raise HTTPException(status_code=400) from None
        # Without `input`: it may hold a token, and the 422 body shows only these three.
        raise RequestValidationError(
            [
                {"type": err["type"], "loc": ("body", *err["loc"]), "msg": err["msg"]}
                for err in exc.errors(include_url=False)
            ]
        ) from None


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _invalid(kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": message}])
