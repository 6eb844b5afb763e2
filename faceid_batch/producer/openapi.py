"""Print the producer API's OpenAPI document (what ``GET /openapi.json`` serves).

    python -m faceid_batch.producer.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from faceid_batch.producer.app import create_app, openapi
from faceid_batch.settings import load_settings

# The document does not depend on the deployment: placeholder settings build the app.
PLACEHOLDERS = {"faceid_secret_id": "AKIDplaceholder", "faceid_secret_key": "placeholder",
                "cos_bucket": "placeholder-1250000000"}


def document() -> dict[str, Any]:
    """The producer API's OpenAPI document, built without real credentials."""
    return openapi(create_app(load_settings(**PLACEHOLDERS)))


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
