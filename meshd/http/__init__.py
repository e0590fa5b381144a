"""The HTTP door: an OpenAI-compatible API, warm-on-open for web pages, metrics and a chat
page, served by uvicorn in the daemon's event loop and going through the same router as gRPC."""
