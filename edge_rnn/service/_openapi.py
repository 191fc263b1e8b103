"""What the routes read and write by hand (raw bytes or JSON), described for the generated OpenAPI."""

from __future__ import annotations

__all__ = ["ERROR", "BYTES", "OPEN", "STEP", "STEP_OUT"]

ERROR = {"description": "An error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"type": {"const": "error"}, "code": {"type": "string"},
                                     "message": {"type": "string"}}}}}}
BYTES = {"description": "Bytes", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                     "format": "binary"}}}}
OPEN = {"requestBody": {"required": False, "description": "empty, or a snapshot to resume",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
STEP = {
    "parameters": [{"name": "X-Step", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
                    "description": "The step's sequence number on this stream, from 0; out of order: 409"}],
    "requestBody": {"required": True, "description": "Content-Type application/octet-stream or application/json "
                    "(UTF-8), in any case; any other, or none: 415", "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "float32 little-endian, whole frames, time x features"},
        "application/json": {"schema": {"type": "object", "required": ["x"],
                                        "properties": {"x": {"description": "the chunk, nested lists of numbers "
                                                             "(or an object of them by input name)"}}}}}}}
STEP_OUT = {"description": "The primary output (float32 bytes, time x features), or with a JSON request every "
                           "output as JSON",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "application/json": {"schema": {"type": "object", "properties": {
                            "outputs": {"type": "object"}}}}}}
