"""ASGI middleware in front of kserve's app: every request gets an x-request-id, and bodies are capped."""

from __future__ import annotations

import uuid

import orjson


class RequestIdAndBodyLimit:
    """ASGI middleware: every request gets an x-request-id (kept if sent) echoed on the response; bodies are capped."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"")
        if not request_id or len(request_id) > 128 or not request_id.isascii():
            request_id = uuid.uuid4().hex.encode()
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
            scope["headers"].append((b"x-request-id", request_id))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*kept, (b"x-request-id", request_id)]
            await send(message)

        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await self._reject(send_with_id, 413, f"body: larger than {self.max_body_bytes} bytes")

        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted_receive, send_with_id)
        except BodyTooLarge:
            await self._reject(send_with_id, 413, f"body: larger than {self.max_body_bytes} bytes")

    @staticmethod
    async def _reject(send, status: int, message: str):
        body = orjson.dumps({"error": message})
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass
