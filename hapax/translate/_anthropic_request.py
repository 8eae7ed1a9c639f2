"""Request bodies: Anthropic Messages ⇄ OpenAI Chat Completions (see
:mod:`hapax.translate.anthropic` for what is dropped and what is refused)."""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson

from hapax.errors import BadRequest

__all__ = ["anthropic_to_openai_request", "openai_to_anthropic_request"]

_TOOL_CHOICE_TO_OPENAI = {"auto": "auto", "any": "required", "none": "none"}
_TOOL_CHOICE_TO_ANTHROPIC = {"auto": "auto", "required": "any", "none": "none"}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dumps_arguments(value: object, param: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # e.g. an integer wider than 64 bits
        raise BadRequest(f"{param} cannot be encoded as JSON: {exc}", param=param) from None


# -- requests: Anthropic -> OpenAI ------------------------------------------------------


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI ``chat.completions`` request."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: required, an array of messages", param="messages")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest("max_tokens: required, a positive integer", param="max_tokens")

    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _anthropic_text(system, "system")
        if text:
            chat.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        chat.extend(_anthropic_message_to_openai(message, f"messages[{i}]"))
    out["messages"] = chat
    out["max_tokens"] = max_tokens

    tools = body.get("tools")
    if tools is not None:
        out["tools"] = _anthropic_tools_to_openai(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict):
            raise BadRequest("tool_choice must be an object", param="tool_choice")
        kind = choice.get("type")
        if kind == "tool":
            name = choice.get("name")
            if not isinstance(name, str):
                raise BadRequest("tool_choice.name: required for type 'tool'",
                                 param="tool_choice.name")
            out["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif isinstance(kind, str) and kind in _TOOL_CHOICE_TO_OPENAI:
            out["tool_choice"] = _TOOL_CHOICE_TO_OPENAI[kind]
        else:
            raise BadRequest("tool_choice.type must be auto, any, tool or none",
                             param="tool_choice.type")
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop_sequences must be an array of strings",
                             param="stop_sequences")
        if stop:
            out["stop"] = stop
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _anthropic_text(value: object, param: str) -> str:
    """A string, or text blocks joined with a blank line (``system``)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"{param} must be a string or an array of text blocks", param=param)
    parts = []
    for j, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text" \
                or not isinstance(block.get("text"), str):
            raise BadRequest(f"{param}[{j}] must be a text block", param=f"{param}[{j}]")
        parts.append(block["text"])
    return "\n\n".join(parts)


def _anthropic_message_to_openai(message: object, param: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise BadRequest(f"{param} must be an object", param=param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(f"{param}.role must be 'user' or 'assistant'", param=f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{param}.content must be a string or an array of content blocks",
                         param=f"{param}.content")
    if role == "assistant":
        return [_anthropic_assistant_to_openai(content, f"{param}.content")]

    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = _block_type(block, where)
        if kind == "text":
            parts.append({"type": "text", "text": _block_text(block, where)})
        elif kind == "image":
            parts.append(_anthropic_image_to_openai(block, where))
        elif kind == "tool_result":
            tool_messages.append(_anthropic_tool_result_to_openai(block, where))
        else:
            raise BadRequest(f"{where}: content block {kind!r} cannot be sent to an "
                             "OpenAI-compatible provider", param=f"{where}.type")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    if parts or not tool_messages:
        return [*tool_messages, {"role": "user", "content": parts}]
    return tool_messages


def _anthropic_assistant_to_openai(content: list[Any], param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}[{j}]"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(_block_text(block, where))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise BadRequest(f"{where}: tool_use needs a string id and name", param=where)
            arguments = _dumps_arguments(block.get("input", {}), f"{where}.input")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise BadRequest(f"{where}: content block {kind!r} cannot be sent to an "
                             "OpenAI-compatible provider", param=f"{where}.type")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    elif out["content"] is None:
        out["content"] = ""
    return out


def _block_type(block: object, param: str) -> object:
    if not isinstance(block, dict):
        raise BadRequest(f"{param} must be an object", param=param)
    return block.get("type")


def _block_text(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{param}.text: required, a string", param=f"{param}.text")
    return text


def _anthropic_image_to_openai(block: Any, param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str) \
                and isinstance(source.get("media_type"), str):
            url = f"data:{source['media_type']};base64,{source['data']}"
            return {"type": "image_url", "image_url": {"url": url}}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise BadRequest(f"{param}.source: only base64 and url image sources can be sent to an "
                     "OpenAI-compatible provider", param=f"{param}.source")


def _anthropic_tool_result_to_openai(block: Any, param: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise BadRequest(f"{param}.tool_use_id: required, a string", param=f"{param}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise BadRequest(f"{param}.content[{k}]: only text can be sent to an "
                                 "OpenAI-compatible provider in a tool result",
                                 param=f"{param}.content[{k}]")
            texts.append(part["text"])
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise BadRequest(f"{param}.content must be a string or an array of text blocks",
                         param=f"{param}.content")
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _anthropic_tools_to_openai(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") not in ("custom", None):
            raise BadRequest(f"tools[{i}]: only custom tools (name, description, "
                             "input_schema) can be sent to an OpenAI-compatible provider",
                             param=f"tools[{i}].type")
        name = tool.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"tools[{i}].name: required, a string", param=f"tools[{i}].name")
        function: dict[str, Any] = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema", {"type": "object", "properties": {}})
        out.append({"type": "function", "function": function})
    return out


# -- requests: OpenAI -> Anthropic ------------------------------------------------------


def openai_to_anthropic_request(body: dict[str, Any], *,
                                default_max_tokens: int = 4096) -> dict[str, Any]:
    """An OpenAI ``chat.completions`` request as an Anthropic Messages request.

    ``default_max_tokens`` is used when the request sets neither ``max_completion_tokens``
    nor ``max_tokens`` (Anthropic requires one)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n: only one choice (n=1) can be requested from an Anthropic "
                         "provider", param="n")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise BadRequest(f"{legacy}: deprecated; use tools and tool_choice", param=legacy)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: required, an array of messages", param="messages")

    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system: list[str] = []
    turns: list[dict[str, Any]] = []  # {"role", "content": [blocks]}, roles alternating
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{param} must be an object", param=param)
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_openai_text(message.get("content"), f"{param}.content"))
            continue
        if role == "user":
            blocks = _openai_user_blocks(message.get("content"), f"{param}.content")
        elif role == "assistant":
            blocks = _openai_assistant_blocks(message, param)
            role = "assistant"
        elif role == "tool":
            blocks = [_openai_tool_result(message, param)]
            role = "user"
        else:
            raise BadRequest(f"{param}.role must be system, developer, user, assistant or "
                             "tool", param=f"{param}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:  # Anthropic requires alternating roles
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns

    max_tokens = body.get("max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = body.get("max_tokens"), "max_tokens"
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest(f"{param} must be a positive integer", param=param)
    out["max_tokens"] = max_tokens

    tools = body.get("tools")
    if tools is not None:
        out["tools"] = _openai_tools_to_anthropic(tools)
    choice = _openai_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (choice is None or choice["type"] != "none"):
        choice = choice or {"type": "auto"}
        choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = stop
    elif stop is not None:
        raise BadRequest("stop must be a string or an array of strings", param="stop")
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise BadRequest("temperature must be a number", param="temperature")
        out["temperature"] = min(max(temperature, 0), 1)
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    return out


def _openai_text(content: object, param: str) -> str:
    """A string, or text parts joined (system/developer/tool content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise BadRequest(f"{param}[{j}] must be a text part", param=f"{param}[{j}]")
            texts.append(part["text"])
        return "\n\n".join(texts)
    raise BadRequest(f"{param} must be a string or an array of text parts", param=param)


def _openai_user_blocks(content: object, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be a string or an array of content parts", param=param)
    blocks = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = _block_type(part, where)
        if kind == "text":
            text = _block_text(part, where)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_openai_image_to_anthropic(part, where))
        else:
            raise BadRequest(f"{where}: content part {kind!r} cannot be sent to an Anthropic "
                             "provider", param=f"{where}.type")
    return blocks


def _openai_image_to_anthropic(part: Any, param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str):
        if url.startswith("data:"):
            header, sep, data = url[5:].partition(",")
            media_type, _, encoding = header.partition(";")
            if sep and encoding == "base64" and media_type:
                return {"type": "image", "source": {"type": "base64",
                                                    "media_type": media_type, "data": data}}
        elif url.startswith(("https://", "http://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest(f"{param}.image_url.url must be an http(s) URL or a base64 data URL",
                     param=f"{param}.image_url.url")


def _openai_assistant_blocks(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            where = f"{param}.content[{j}]"
            kind = _block_type(part, where)
            text = part.get(kind) if kind in ("text", "refusal") else None
            if not isinstance(text, str):
                raise BadRequest(f"{where} must be a text or refusal part", param=where)
            if text:
                blocks.append({"type": "text", "text": text})
    elif isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        raise BadRequest(f"{param}.content must be a string, an array of text parts or null",
                         param=f"{param}.content")
    if message.get("function_call") is not None:
        raise BadRequest(f"{param}.function_call: deprecated; use tool_calls",
                         param=f"{param}.function_call")
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise BadRequest(f"{param}.tool_calls must be an array", param=f"{param}.tool_calls")
    for k, call in enumerate(calls):
        where = f"{param}.tool_calls[{k}]"
        _block_type(call, where)
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(function.get("name"), str):
            raise BadRequest(f"{where} needs an id and a function with a name", param=where)
        arguments = function.get("arguments")
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(arguments, (str, type(None))):
            raise BadRequest(f"{where}.function.arguments must be a JSON object encoded as a "
                             "string", param=f"{where}.function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"],
                       "name": function["name"], "input": parsed})
    return blocks


def _openai_tool_result(message: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise BadRequest(f"{param}.tool_call_id: required, a string",
                         param=f"{param}.tool_call_id")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, list):
        text = _openai_text(content, f"{param}.content")  # validates: text parts only
        block["content"] = [{"type": "text", "text": p["text"]} for p in content if p["text"]] \
            if text else ""
    elif isinstance(content, str) or content is None:
        block["content"] = content or ""
    else:
        raise BadRequest(f"{param}.content must be a string or an array of text parts",
                         param=f"{param}.content")
    return block


def _openai_tools_to_anthropic(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        _block_type(tool, f"tools[{i}]")
        function = tool.get("function")
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise BadRequest(f"tools[{i}]: only function tools can be sent to an Anthropic "
                             "provider", param=f"tools[{i}].type")
        name = function.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"tools[{i}].function.name: required, a string",
                             param=f"tools[{i}].function.name")
        converted: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str):
            converted["description"] = function["description"]
        schema = function.get("parameters")
        converted["input_schema"] = schema if isinstance(schema, dict) \
            else {"type": "object", "properties": {}}
        out.append(converted)
    return out


def _openai_tool_choice(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICE_TO_ANTHROPIC:
        return {"type": _TOOL_CHOICE_TO_ANTHROPIC[choice]}
    if isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") == "function" and isinstance(function, dict) \
                and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
    raise BadRequest("tool_choice must be auto, required, none or "
                     '{"type": "function", "function": {"name": ...}}', param="tool_choice")
