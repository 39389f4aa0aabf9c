"""The API's URL prefix, shared by the app and its middleware."""

API_PREFIX = "/api/v1"
