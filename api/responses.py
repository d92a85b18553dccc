"""A JSON response rendered with orjson (fast, handles datetimes and numpy floats)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse, Response


class JSON(JSONResponse):
    # a JSONResponse (not a bare Response) so that FastAPI documents a route's response model
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class RawJSON(Response):
    """A body that is JSON already (a final document from a NOTIFY): sent as it is."""

    media_type = "application/json"
