"""Errors the API answers with: a stable code, a message, an HTTP status; never a traceback."""
from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self, request_id=None):
        out = {"error": {"code": self.code, "message": self.message}}
        if request_id:
            out["request_id"] = request_id
        return out


def bad_request(code, message):
    return ApiError(400, code, message)


def unavailable(code, message, retry_after=1):
    return ApiError(503, code, message, {"Retry-After": str(retry_after)})
