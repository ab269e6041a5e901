"""Routes of the original service (sontl/novita-ai-api) that client scripts call, over this API's services."""
