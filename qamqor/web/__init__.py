"""The FastAPI application: mounts every capability's routers."""
