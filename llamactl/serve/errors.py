"""OpenAI's error object, with the HTTP status each kind of failure gets."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A failure the client is told about as {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def context_exceeded(prompt: int, slot_ctx: int, completion: int | None = None) -> APIError:
    if completion:
        message = (f"this request needs {prompt + completion} tokens ({prompt} in the prompt, "
                   f"{completion} for the completion); a slot's context is {slot_ctx} tokens")
    else:
        message = f"the prompt is {prompt} tokens; a slot's context is {slot_ctx} tokens"
    return APIError(400, message, param="messages", code="context_length_exceeded")


def unauthorized() -> APIError:
    return APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def model_not_found(name: str, served: list[str]) -> APIError:
    return APIError(404, f"the model {name!r} is not served here; served: {', '.join(served)}",
                    param="model", code="model_not_found")


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is over {limit} bytes", code="request_too_large")


def busy(message: str, retry_after: int = 1) -> APIError:
    return APIError(503, message, type="server_error", code="server_busy",
                    headers={"Retry-After": str(retry_after)})
