"""OpenAI's request and response shapes, as pydantic models.

Requests ignore fields they do not know (OpenAI's own clients send new ones all the time);
the fields they do know are checked, and a bad one is a 400 naming it.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamactl.serve.errors import APIError, bad_request


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- chat requests ---------------------------------------------------------------------------


class TextPart(_Request):
    """A content part: text, or an image (`image_url`: {"url": ...} or the URL itself)."""

    type: str
    text: Optional[str] = None
    image_url: Union[str, dict[str, Any], None] = None

    def url(self) -> str | None:
        if isinstance(self.image_url, dict):
            url = self.image_url.get("url")
            return url if isinstance(url, str) else None
        return self.image_url


class FunctionCall(_Request):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class ToolCall(_Request):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type == "image_url":
                continue            # see image_urls
            if part.type != "text":
                raise bad_request(f"content parts of type {part.type!r} are not supported (text and image_url)",
                                  param="messages")
            parts.append(part.text or "")
        return "".join(parts)

    def image_urls(self) -> list[str]:
        """The URLs of the message's image_url parts, in order."""
        if self.content is None or isinstance(self.content, str):
            return []
        urls = []
        for part in self.content:
            if part.type == "image_url":
                url = part.url()
                if not url:
                    raise bad_request("an image_url part needs image_url.url", param="messages")
                urls.append(url)
        return urls


class FunctionDef(_Request):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Request):
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampled(_Request):
    model: str
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: Optional[float] = Field(default=None, ge=0.0)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(default=None, ge=1)
    ignore_eos: bool = False      # llama-server's extension: generate past end-of-turn tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampled):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(default=16, ge=1)   # OpenAI's default for completions

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise bad_request("only one prompt per request", param="prompt")
        return self.prompt[0]


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The request `model` from a JSON body; APIError 400 for bad JSON or a bad field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise APIError(400, f"{where}: {err.get('msg')}" if where else str(err.get("msg")),
                       param=where or None) from None


# -- responses -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] = Field(default_factory=dict)
    # with a draft model (--draft): OpenAI's fields for predicted tokens, here the draft's
    # proposals that the model accepted and rejected
    completion_tokens_details: Optional[dict[str, int]] = None


class OutFunction(BaseModel):
    name: str
    arguments: str


class OutToolCall(BaseModel):
    index: Optional[int] = None
    id: str
    type: Literal["function"] = "function"
    function: OutFunction


class OutMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[OutToolCall]] = None


class Choice(BaseModel):
    index: int = 0
    message: OutMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[list[OutToolCall]] = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Optional[str] = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Optional[str] = None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llamactl"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
