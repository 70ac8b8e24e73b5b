"""What every service's FastAPI app shares: its version, and 400 for a body that is not JSON."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tlsstorm import __version__


async def _malformed_json_is_a_bad_request(request: Request, error: RequestValidationError):
    """A body that does not parse as JSON is 400 (HTTP's norm); a JSON body whose fields are
    wrong stays 422, FastAPI's answer naming each field."""
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return JSONResponse(status_code=400, content={
            "detail": "the request body is not valid JSON",
            "errors": jsonable_encoder(problems)})
    return await request_validation_exception_handler(request, error)


def service_app(title: str) -> FastAPI:
    app = FastAPI(title=title, version=__version__)
    app.add_exception_handler(RequestValidationError, _malformed_json_is_a_bad_request)
    return app
